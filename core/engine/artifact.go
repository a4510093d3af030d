package engine

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/hypervisor"
)

// Whatever a guest names a file, what it sends back lands inside the
// sample's directory and nowhere else: the local name is the guest file's
// base name made safe (no separator, no "..", no control character, no
// device name Windows reserves), names that differ only by case are told
// apart (the host's filesystem may not), the driver writes into a private
// staging directory the engine just created, only a regular file is moved
// into place, and every move goes through an os.Root that refuses to
// follow a link out of the directory.

// maxNameBytes bounds a local file name; every host filesystem takes it.
const maxNameBytes = 100

var reservedNames = map[string]bool{
	"CON": true, "PRN": true, "AUX": true, "NUL": true, "CONIN$": true, "CONOUT$": true,
	"COM1": true, "COM2": true, "COM3": true, "COM4": true, "COM5": true, "COM6": true, "COM7": true, "COM8": true, "COM9": true,
	"LPT1": true, "LPT2": true, "LPT3": true, "LPT4": true, "LPT5": true, "LPT6": true, "LPT7": true, "LPT8": true, "LPT9": true,
}

// SafeName turns a file name from elsewhere (a sample's, a guest file's)
// into one that is safe to create on any host OS and to substitute into a
// guest path: letters, digits, '.', '-', '_' and '+' are kept, anything
// else becomes '_'; a leading dot or a reserved device name is prefixed.
func SafeName(name string) string {
	var b strings.Builder
	for _, r := range name {
		switch {
		case r < utf8.RuneSelf && (unicode.IsLetter(r) || unicode.IsDigit(r) || strings.ContainsRune(".-_+", r)):
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	s := strings.TrimRight(b.String(), ". ")
	if s == "" {
		return "_"
	}
	if s[0] == '.' {
		s = "_" + s
	}
	stem, _, _ := strings.Cut(s, ".")
	if reservedNames[strings.ToUpper(stem)] {
		s = "_" + s
	}
	if len(s) > maxNameBytes {
		ext := filepath.Ext(s)
		if len(ext) > 16 {
			ext = ""
		}
		s = s[:maxNameBytes-len(ext)] + ext
	}
	return s
}

// namer hands out local names unique without regard to case.
type namer map[string]bool

func (n namer) name(want string) string {
	base := SafeName(want)
	ext := filepath.Ext(base)
	stem := strings.TrimSuffix(base, ext)
	name := base
	for i := 2; n[strings.ToLower(name)]; i++ {
		name = fmt.Sprintf("%s-%d%s", stem, i, ext)
	}
	n[strings.ToLower(name)] = true
	return name
}

// collector brings a task's artifacts back into sub, a directory relative
// to dir, the task's directory (absolute, for the driver).
type collector struct {
	dir    string
	sub    string
	driver hypervisor.Driver
	vm     string
	// timeout bounds each copy.
	timeout time.Duration
	// maxCount and maxSize bound what a task brings back: the number of
	// artifacts, and their bytes together.
	maxCount int
	maxSize  int64
	// root is dir, opened for the copies: every move goes through it.
	root *os.Root
	// kept counts the artifacts brought back so far, and size their bytes.
	kept int
	size int64
}

// collect copies every guest path and returns what came of each; err is
// the first failure.
func (c *collector) collect(ctx context.Context, guestPaths []string) ([]Artifact, error) {
	if len(guestPaths) == 0 {
		return nil, nil
	}
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return nil, fmt.Errorf("artifact directory: %w", err)
	}
	root, err := os.OpenRoot(c.dir)
	if err != nil {
		return nil, fmt.Errorf("artifact directory: %w", err)
	}
	defer root.Close()
	c.root = root
	if err := c.root.MkdirAll(c.sub, 0o755); err != nil {
		return nil, fmt.Errorf("artifact directory: %w", err)
	}
	staging, err := os.MkdirTemp(c.dir, ".staging-")
	if err != nil {
		return nil, fmt.Errorf("artifact staging directory: %w", err)
	}
	defer os.RemoveAll(staging)
	stagingRel := filepath.Base(staging)
	names := namer{}
	out := make([]Artifact, 0, len(guestPaths))
	var first error
	for i, gp := range guestPaths {
		a := Artifact{GuestPath: gp}
		if c.kept >= c.maxCount {
			a.Dropped, a.Error = true, fmt.Sprintf("dropped: the task already brought back artifacts_max_count (%d) artifacts", c.maxCount)
			out = append(out, a)
			continue
		}
		local := path.Join(c.sub, names.name(config.GuestBase(gp)))
		err := c.one(ctx, gp, filepath.Join(staging, fmt.Sprintf("%d", i)), path.Join(stagingRel, fmt.Sprintf("%d", i)), local, &a)
		if err != nil {
			a.Error = err.Error()
			if first == nil {
				first = fmt.Errorf("artifact %s: %w", gp, err)
			}
		}
		out = append(out, a)
	}
	return out, first
}

func (c *collector) one(ctx context.Context, guestPath, stagedHost, stagedRel, local string, a *Artifact) error {
	cctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	if err := c.driver.CopyOut(cctx, c.vm, guestPath, stagedHost); err != nil {
		return err
	}
	fi, err := c.root.Lstat(stagedRel)
	if err != nil {
		return fmt.Errorf("the driver reported the copy done but left no file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("the copy is not a regular file (%s); refused", fi.Mode().Type())
	}
	if c.size+fi.Size() > c.maxSize {
		_ = c.root.Remove(stagedRel)
		a.Dropped = true
		a.Error = fmt.Sprintf("dropped: its %d bytes would take the task's artifacts over artifacts_max_size (%d bytes; %d kept)",
			fi.Size(), c.maxSize, c.size)
		return nil
	}
	f, err := c.root.Open(stagedRel)
	if err != nil {
		return err
	}
	h := sha256.New()
	n, err := io.Copy(h, f)
	f.Close()
	if err != nil {
		return err
	}
	if err := c.root.Rename(stagedRel, local); err != nil {
		return err
	}
	a.Path, a.Size, a.SHA256 = local, n, hex.EncodeToString(h.Sum(nil))
	c.kept++
	c.size += n
	return nil
}
