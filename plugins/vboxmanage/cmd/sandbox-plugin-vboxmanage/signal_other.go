//go:build !unix

package main

// survivePipeToDeadHost has nothing to do where a broken pipe raises no
// signal.
func survivePipeToDeadHost() {}
