//go:build !unix

package host

import "errors"

// makeSocketDir: elsewhere go-plugin's own temporary directory serves.
func makeSocketDir() (string, error) { return "", errors.ErrUnsupported }
