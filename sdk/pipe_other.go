//go:build !unix

package sdk

// surviveDeadHostPipe has nothing to do where a broken pipe raises no
// signal.
func surviveDeadHostPipe() {}
