//go:build !unix

package plugintest

import "errors"

// canLock says lockFile serializes builds across processes here: not
// without flock, so each Cache builds into a directory of its own.
const canLock = false

func lockFile(string) (func(), error) { return nil, errors.New("no file locks on this system") }

func privateDir(dir string) error { return errNotPrivate }
