// Package plugintest helps test code that runs plugin binaries: it builds
// Go main packages into a directory once per test process, so tests launch
// the very executables users run.
package plugintest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
)

// Build compiles the main package pkg (an import path, or a directory
// relative to the caller's working directory) into dir and returns the
// executable's path. The go command's build cache makes repeated builds
// cheap. extraFlags go to `go build`, e.g. "-race". Without -race the
// executable is built with CGO_ENABLED=0, as `make build` builds the
// project's own: a static executable starts in about half the time of
// one the dynamic loader links first, and tests start thousands.
func Build(dir, pkg string, extraFlags ...string) (string, error) {
	goCmd := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goCmd); err != nil {
		if goCmd, err = exec.LookPath("go"); err != nil {
			return "", fmt.Errorf("plugintest: no go command to build %s with: %w", pkg, err)
		}
	}
	name := filepath.Base(strings.TrimSuffix(pkg, "/"))
	if runtime.GOOS == "windows" {
		name += ".exe"
	}
	out := filepath.Join(dir, name)
	args := append([]string{"build", "-o", out}, extraFlags...)
	cmd := exec.Command(goCmd, append(args, pkg)...)
	if !slices.Contains(extraFlags, "-race") {
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("plugintest: go build %s: %v\n%s", pkg, err, stderr.String())
	}
	return out, nil
}
