//go:build !windows

package runner

func envKey(k string) string { return k }
