// Package statedir keeps what sandbox must remember across processes in a
// directory: the quarantine, and a lease file per VM so that two sandbox
// processes never operate on one VM at once. Everything is guarded by file
// locks (flock on Unix, LockFileEx on Windows), which the kernel releases
// when a process dies, so a crashed process never leaves a VM leased.
//
// The directory says which VMs are in use and why some are out of service,
// and every sandbox process trusts what it finds there, so it must be
// private: it is created mode 0700 and refused when another user owns it
// or others can write to it. Every file in it is opened through an
// os.Root, and lease and lock files are checked to be the very file at
// their path after they are opened, so a symlink planted in it is never
// followed.
package statedir

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/sandboxhq/sandbox/core/lifecycle"
	"github.com/sandboxhq/sandbox/sdk/wait"
)

// lockRetry is how often a lock held by another process is tried again.
const lockRetry = 10 * time.Millisecond

// leasesDir is the subdirectory of the lease files.
const leasesDir = "leases"

// Dir is a state directory.
type Dir struct {
	path  string
	local lifecycle.Leases
	log   hclog.Logger

	mu   sync.Mutex
	root *os.Root

	guard guard
}

// Option adjusts Open.
type Option func(*Dir)

// WithLogger makes the directory log what it cannot return as an error: a
// lease that another process took after someone deleted the first
// holder's lease file.
func WithLogger(l hclog.Logger) Option {
	return func(d *Dir) { d.log = l }
}

// Open creates the directory if needed (mode 0700: it says which VMs are in
// use and why some are not) and returns it. A directory that another user
// owns, or that its group or others can write to, is refused: whoever can
// write there can take VMs out of service or block every operation.
func Open(path string, opts ...Option) (*Dir, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("state directory %s: %w", path, err)
	}
	d := &Dir{path: abs, local: lifecycle.NewLocalLeases(), log: hclog.NewNullLogger()}
	for _, o := range opts {
		o(d)
	}
	if _, err := d.current(); err != nil {
		return nil, err
	}
	return d, nil
}

// Path returns the directory's path.
func (d *Dir) Path() string { return d.path }

// current returns the open directory. If the directory at the path is no
// longer the one opened (someone deleted or replaced it), it is opened
// again, created and checked as in Open.
func (d *Dir) current() (*os.Root, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.root != nil {
		at, err := os.Stat(d.path)
		open, oerr := d.root.Stat(".")
		if err == nil && oerr == nil && os.SameFile(at, open) {
			return d.root, nil
		}
		// Not closed here: another goroutine may be using it; the
		// garbage collector closes it once nobody does.
		d.root = nil
	}
	root, err := d.open()
	if err != nil {
		return nil, err
	}
	d.root = root
	return root, nil
}

// open creates, checks and opens the directory and its leases directory.
func (d *Dir) open() (*os.Root, error) {
	if err := os.MkdirAll(d.path, 0o700); err != nil {
		return nil, fmt.Errorf("state directory %s: %w (set state_dir in config.toml to a writable place)", d.path, err)
	}
	if err := checkPrivate(d.path, d.path); err != nil {
		return nil, err
	}
	root, err := os.OpenRoot(d.path)
	if err != nil {
		return nil, fmt.Errorf("state directory %s: %w", d.path, err)
	}
	// The directory checked is the one opened: a swap between the check and
	// the open would show as another file.
	at, err := os.Stat(d.path)
	open, oerr := root.Stat(".")
	if err != nil || oerr != nil || !os.SameFile(at, open) {
		_ = root.Close()
		return nil, fmt.Errorf("state directory %s changed while it was being opened; try again", d.path)
	}
	if err := root.Mkdir(leasesDir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		_ = root.Close()
		return nil, fmt.Errorf("state directory %s: %w", d.path, err)
	}
	fi, err := root.Lstat(leasesDir)
	if err == nil && !fi.IsDir() {
		err = fmt.Errorf("%s is not a directory; remove it", filepath.Join(d.path, leasesDir))
	}
	if err == nil {
		err = checkInfo(d.path, filepath.Join(d.path, leasesDir), fi)
	}
	if err != nil {
		_ = root.Close()
		return nil, err
	}
	return root, nil
}

// checkPrivate refuses a directory another user owns or others can write.
func checkPrivate(stateDir, path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("state directory %s: %w", stateDir, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("state directory %s is not a directory; set state_dir in config.toml to a directory", stateDir)
	}
	return checkInfo(stateDir, path, fi)
}

// checkInfo is checkPrivate on a file's information.
func checkInfo(stateDir, path string, fi fs.FileInfo) error {
	if err := checkOwner(path, fi); err != nil {
		return fmt.Errorf("state directory %s: %w: another user could plant leases or a quarantine in it, or block every operation; "+
			"remove it or set state_dir in config.toml to a directory of your own", stateDir, err)
	}
	// Windows reports every writable file as mode 0666; its ACLs decide.
	if runtime.GOOS != "windows" && fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("state directory %s: %s is writable by its group or by others (mode %s): "+
			"run `chmod 700 %s`, or set state_dir in config.toml to a private directory", stateDir, path, fi.Mode().Perm(), path)
	}
	return nil
}

// openLocked opens name in the directory for reading and writing, creating
// it (mode 0600) if needed, and locks it: exclusively or shared, waiting
// within ctx when wait is set. It returns the file only once it holds the
// lock on the very file at name: a file replaced or deleted meanwhile (a
// lease released by its holder, a directory removed) is opened again, and
// a symlink is refused.
func (d *Dir) openLocked(ctx context.Context, name string, exclusive, wait bool) (*os.File, error) {
	for {
		root, err := d.current()
		if err != nil {
			return nil, err
		}
		// os.Root would follow a symlink that stays inside the directory;
		// look first, and check the file opened is the one looked at.
		if err := d.noSymlink(root, name); err != nil {
			return nil, err
		}
		f, err := root.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue // the directory went away since current(); open it again
			}
			return nil, d.fileError(name, err)
		}
		if err := lockWithin(ctx, f, exclusive, wait); err != nil {
			f.Close()
			return nil, err
		}
		same, err := d.isAt(root, name, f)
		if err != nil {
			unlock(f)
			f.Close()
			return nil, err
		}
		if same {
			return f, nil
		}
		unlock(f)
		f.Close()
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
}

// noSymlink refuses a symlink at name.
func (d *Dir) noSymlink(root *os.Root, name string) error {
	fi, err := root.Lstat(name)
	if err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		return fmt.Errorf("%s is a symlink; sandbox never follows one in its state directory: remove it",
			filepath.Join(d.path, name))
	}
	return nil
}

// isAt reports whether f is the file at name. A symlink at name is an
// error: nothing in the directory is opened through one.
func (d *Dir) isAt(root *os.Root, name string, f *os.File) (bool, error) {
	at, err := root.Lstat(name)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, d.fileError(name, err)
	}
	if at.Mode()&fs.ModeSymlink != 0 {
		return false, fmt.Errorf("%s is a symlink; sandbox never follows one in its state directory: remove it",
			filepath.Join(d.path, name))
	}
	open, err := f.Stat()
	if err != nil {
		return false, d.fileError(name, err)
	}
	return os.SameFile(at, open), nil
}

func (d *Dir) fileError(name string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	return fmt.Errorf("state directory: %s: %w", filepath.Join(d.path, name), err)
}

// lockWithin takes f's lock. When block is set and another process holds
// it, it tries again every lockRetry, and once more just before ctx's
// deadline, until it has it or ctx ends; then it answers ctx's error.
func lockWithin(ctx context.Context, f *os.File, exclusive, block bool) error {
	if !block {
		return tryLock(f, exclusive)
	}
	return wait.Until(ctx, wait.Policy{Initial: lockRetry}, func(context.Context) (bool, error) {
		err := tryLock(f, exclusive)
		if errors.Is(err, ErrLocked) {
			return false, nil
		}
		return err == nil, err
	})
}

// TryLock takes the lock file name in the directory (created mode 0600,
// never through a symlink) without waiting, for a process that must be the
// only one of its kind using the directory. It fails with ErrLocked when
// another process holds it. The lock lasts until release or the process's
// death.
func (d *Dir) TryLock(name string) (release func(), err error) {
	f, err := d.openLocked(context.Background(), name, true, false)
	if err != nil {
		return nil, err
	}
	return func() {
		unlock(f)
		f.Close()
	}, nil
}

// Quarantine is the quarantine shared by every process using the
// directory, kept in quarantine.json.
func (d *Dir) Quarantine() lifecycle.Quarantine { return quarantine{d} }

type quarantine struct{ d *Dir }

const quarantineFile = "quarantine.json"

// update runs f on the quarantine under the directory's lock and saves
// what f leaves, atomically.
func (q quarantine) update(ctx context.Context, f func(map[string]lifecycle.QuarantineEntry) bool) error {
	lock, err := q.d.openLocked(ctx, "quarantine.lock", true, true)
	if err != nil {
		return fmt.Errorf("lock the quarantine: %w", err)
	}
	defer func() {
		unlock(lock)
		lock.Close()
	}()
	root, err := q.d.current()
	if err != nil {
		return err
	}
	entries, err := q.read(root)
	if err != nil {
		return err
	}
	if !f(entries) {
		return nil
	}
	data, err := json.MarshalIndent(entries, "", "  ")
	if err != nil {
		return err
	}
	tmp := fmt.Sprintf("quarantine-%d-%d.json", os.Getpid(), time.Now().UnixNano())
	w, err := root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return q.d.fileError(quarantineFile, err)
	}
	defer func() { _ = root.Remove(tmp) }()
	if _, err := w.Write(append(data, '\n')); err != nil {
		w.Close()
		return q.d.fileError(quarantineFile, err)
	}
	if err := w.Close(); err != nil {
		return q.d.fileError(quarantineFile, err)
	}
	if err := root.Rename(tmp, quarantineFile); err != nil {
		return q.d.fileError(quarantineFile, err)
	}
	return nil
}

func (q quarantine) read(root *os.Root) (map[string]lifecycle.QuarantineEntry, error) {
	entries := map[string]lifecycle.QuarantineEntry{}
	data, err := root.ReadFile(quarantineFile)
	if errors.Is(err, os.ErrNotExist) {
		return entries, nil
	}
	if err != nil {
		return nil, q.d.fileError(quarantineFile, err)
	}
	if err := json.Unmarshal(data, &entries); err != nil {
		return nil, fmt.Errorf("%s is damaged (%v); fix or delete it: every VM in it is back in service once it is gone",
			filepath.Join(q.d.path, quarantineFile), err)
	}
	return entries, nil
}

// Mark implements lifecycle.Quarantine.
func (q quarantine) Mark(ctx context.Context, key, reason string) error {
	return q.update(ctx, func(m map[string]lifecycle.QuarantineEntry) bool {
		e, ok := m[key]
		if !ok {
			e.Since = time.Now().UTC()
		}
		e.Reason = reason
		m[key] = e
		return true
	})
}

// Clear implements lifecycle.Quarantine.
func (q quarantine) Clear(ctx context.Context, key string) error {
	return q.update(ctx, func(m map[string]lifecycle.QuarantineEntry) bool {
		if _, ok := m[key]; !ok {
			return false
		}
		delete(m, key)
		return true
	})
}

// Get implements lifecycle.Quarantine. Reads take no lock: the file is
// replaced atomically, so a reader sees the old or the new version whole.
func (q quarantine) Get(_ context.Context, key string) (lifecycle.QuarantineEntry, bool, error) {
	entries, err := q.d.List()
	if err != nil {
		return lifecycle.QuarantineEntry{}, false, err
	}
	e, ok := entries[key]
	return e, ok, nil
}

// List returns every quarantined VM by key.
func (d *Dir) List() (map[string]lifecycle.QuarantineEntry, error) {
	root, err := d.current()
	if err != nil {
		return nil, err
	}
	return quarantine{d}.read(root)
}

// commandLine is this process's command line as a lease records it.
func commandLine() string {
	args := make([]string, len(os.Args))
	for i, a := range os.Args {
		if i == 0 {
			a = filepath.Base(a)
		}
		if a == "" || strings.ContainsAny(a, " \t\n\"'") {
			a = fmt.Sprintf("%q", a)
		}
		args[i] = a
	}
	s := strings.Join(args, " ")
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}
