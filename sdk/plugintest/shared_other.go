//go:build !unix

package plugintest

// cacheDir is a directory of the Cache's own: without flock no lock keeps
// two processes from building into a shared one at once.
func cacheDir() (string, lockFunc, error) { return ownDir() }
