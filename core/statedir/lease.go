package statedir

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/sandboxhq/sandbox/core/lifecycle"
)

// guardInterval is how often the directory's guard checks that the lease
// files of the leases this process holds are still at their paths, and
// puts back one that someone deleted (alone or with the whole directory),
// so that a command started after the deletion waits for the holder
// instead of running beside it. Between two changes of the leases
// directory a check costs three stat calls, whatever the number of leases
// held; guardFullEvery bounds how long a change that a coarse directory
// time hides goes unnoticed.
const (
	guardInterval  = 10 * time.Millisecond
	guardFullEvery = time.Second
)

// maxRecord bounds what is read of a lease file.
const maxRecord = 4096

// fileName is the lease file of key: a readable prefix of the key and a
// hash of all of it, so that any VM name (long, non-ASCII, with slashes)
// makes a short, unique, portable file name.
func fileName(key string) string {
	var b strings.Builder
	for _, r := range key {
		if b.Len() >= 40 {
			break
		}
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '.':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	sum := sha256.Sum256([]byte(key))
	return b.String() + "-" + hex.EncodeToString(sum[:8]) + ".lock"
}

func leasePath(key string) string { return leasesDir + "/" + fileName(key) }

// Leases serializes operations per VM across every process sharing the
// directory, and within this process. Its leases also implement
// lifecycle.TryLeases.
func (d *Dir) Leases() lifecycle.Leases { return leases{d} }

type leases struct{ d *Dir }

var _ lifecycle.TryLeases = leases{}

// Acquire implements lifecycle.Leases.
func (l leases) Acquire(ctx context.Context, key string) (func(), error) {
	// Goroutines of this process queue on the in-process lease first, so
	// they are served in turn instead of polling the file lock together.
	releaseLocal, err := l.d.local.Acquire(ctx, key)
	if err != nil {
		return nil, err
	}
	h, _, err := l.d.take(ctx, key, true)
	if err != nil {
		releaseLocal()
		return nil, fmt.Errorf("lease on %s: %w", key, err)
	}
	return func() {
		h.release()
		releaseLocal()
	}, nil
}

// TryAcquire implements lifecycle.TryLeases.
func (l leases) TryAcquire(key string) (func(), *lifecycle.LeaseHolder, error) {
	releaseLocal, _, err := l.d.local.(lifecycle.TryLeases).TryAcquire(key)
	if err != nil {
		return nil, nil, err
	}
	// A reader of the lease (`sandbox vm list`) holds a shared lock for an
	// instant; a few tries tell it from a holder.
	ctx, cancel := context.WithTimeout(context.Background(), 3*lockRetry)
	h, left, err := l.d.take(ctx, key, true)
	cancel()
	if errors.Is(err, context.DeadlineExceeded) {
		releaseLocal()
		e := &lifecycle.LeaseHeldError{Key: key}
		if info, ierr := l.d.Lease(key); ierr == nil && info != nil {
			e.Holder = &info.LeaseHolder
		}
		return nil, nil, e
	}
	if err != nil {
		releaseLocal()
		return nil, nil, fmt.Errorf("lease on %s: %w", key, err)
	}
	return func() {
		h.release()
		releaseLocal()
	}, left, nil
}

// held is a lease this process holds.
type held struct {
	d    *Dir
	key  string
	name string
	rec  lifecycle.LeaseHolder

	mu       sync.Mutex
	released bool
	lost     bool
	// files are the lease file locked at acquisition and any the guard put
	// back after a deletion; the last is the one at the path.
	files []*os.File
}

// take locks key's lease file (waiting within ctx when wait is set),
// records this process as its holder and puts the lease in the guard's
// care. It also returns the record a holder that died left in the file.
func (d *Dir) take(ctx context.Context, key string, wait bool) (*held, *lifecycle.LeaseHolder, error) {
	name := leasePath(key)
	f, err := d.openLocked(ctx, name, true, wait)
	if err != nil {
		return nil, nil, err
	}
	left := readRecord(f)
	h := &held{
		d: d, key: key, name: name,
		rec:   lifecycle.LeaseHolder{Key: key, PID: os.Getpid(), Command: commandLine(), Since: time.Now().UTC()},
		files: []*os.File{f},
	}
	if err := writeRecord(f, h.rec); err != nil {
		unlock(f)
		f.Close()
		return nil, nil, d.fileError(name, err)
	}
	d.guard.add(d, h)
	return h, left, nil
}

// guard watches the leases this process holds in one directory, with one
// goroutine while there is any.
type guard struct {
	mu   sync.Mutex
	held map[*held]struct{}
	stop chan struct{}
	done chan struct{}
}

func (g *guard) add(d *Dir, h *held) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.held == nil {
		g.held = map[*held]struct{}{}
	}
	g.held[h] = struct{}{}
	if g.stop == nil {
		g.stop, g.done = make(chan struct{}), make(chan struct{})
		go g.run(d, g.stop, g.done)
	}
}

// remove forgets h; the last lease removed ends the goroutine.
func (g *guard) remove(h *held) {
	g.mu.Lock()
	delete(g.held, h)
	var stop, done chan struct{}
	if len(g.held) == 0 && g.stop != nil {
		stop, done = g.stop, g.done
		g.stop, g.done = nil, nil
	}
	g.mu.Unlock()
	if stop != nil {
		close(stop)
		<-done
	}
}

func (g *guard) leases() []*held {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]*held, 0, len(g.held))
	for h := range g.held {
		out = append(out, h)
	}
	return out
}

func (g *guard) run(d *Dir, stop, done chan struct{}) {
	defer close(done)
	t := time.NewTicker(guardInterval)
	defer t.Stop()
	var last fs.FileInfo
	var lastFull time.Time
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		root, err := d.current() // opens the directory again if it was deleted
		if err != nil {
			continue // not there (yet); try again at the next tick
		}
		fi, err := root.Stat(leasesDir)
		if err == nil && last != nil && os.SameFile(fi, last) && fi.ModTime().Equal(last.ModTime()) &&
			time.Since(lastFull) < guardFullEvery {
			continue // no file came or went
		}
		last, lastFull = fi, time.Now()
		for _, h := range g.leases() {
			h.keep(root)
		}
	}
}

// keep puts h's lease file back if it is no longer at its path.
func (h *held) keep(root *os.Root) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.released || h.lost {
		return
	}
	if same, err := h.d.isAt(root, h.name, h.files[len(h.files)-1]); err != nil || same {
		return
	}
	f, err := h.putBack(root)
	if errors.Is(err, fs.ErrExist) {
		h.lost = true
		other := "another process"
		if info, ierr := h.d.Lease(h.key); ierr == nil && info != nil {
			other = info.LeaseHolder.String()
		}
		h.d.log.Error("the lease file of a VM in use was deleted and another process took the VM; "+
			"two operations may now run on it at once", "vm", h.key, "other", other)
		return
	}
	if err != nil {
		return
	}
	h.files = append(h.files, f)
	h.d.log.Warn("the lease file of a VM in use was deleted; put it back", "vm", h.key)
}

// putBack makes a new lease file, locked and recorded before it appears
// at the path, so that nobody can lock it first. It fails with
// fs.ErrExist when another file took the path meanwhile.
func (h *held) putBack(root *os.Root) (*os.File, error) {
	tmp := fmt.Sprintf("%s/.%d-%d.tmp", leasesDir, os.Getpid(), time.Now().UnixNano())
	f, err := root.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	defer func() { _ = root.Remove(tmp) }()
	if err := tryLock(f, true); err != nil {
		f.Close()
		return nil, err
	}
	if err := writeRecord(f, h.rec); err != nil {
		unlock(f)
		f.Close()
		return nil, err
	}
	if err := root.Link(tmp, h.name); err != nil {
		unlock(f)
		f.Close()
		return nil, err
	}
	return f, nil
}

// release removes the lease file and unlocks it. A waiter that had opened
// the file sees it is no longer at the path and opens the new one.
func (h *held) release() {
	h.mu.Lock()
	h.released = true
	h.mu.Unlock()
	h.d.guard.remove(h)
	root, rerr := h.d.current()
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, f := range h.files {
		// Emptied first: where the file cannot be removed (a Windows
		// process still has it open), a record left in it would read as a
		// holder that died.
		_ = f.Truncate(0)
		if rerr == nil {
			if same, _ := h.d.isAt(root, h.name, f); same {
				_ = root.Remove(h.name)
			}
		}
		unlock(f)
		f.Close()
	}
	h.files = nil
}

func readRecord(f *os.File) *lifecycle.LeaseHolder {
	data, err := io.ReadAll(io.LimitReader(io.NewSectionReader(f, 0, maxRecord), maxRecord))
	if err != nil || len(strings.TrimSpace(string(data))) == 0 {
		return nil
	}
	var rec lifecycle.LeaseHolder
	if json.Unmarshal(data, &rec) != nil || rec.PID == 0 {
		return nil
	}
	return &rec
}

func writeRecord(f *os.File, rec lifecycle.LeaseHolder) error {
	data, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if err := f.Truncate(0); err != nil {
		return err
	}
	_, err = f.WriteAt(append(data, '\n'), 0)
	return err
}

// LeaseInfo is what a lease file says: who holds or held the lease, and
// whether that holder still does.
type LeaseInfo struct {
	lifecycle.LeaseHolder
	// Live is set while the holder holds the lease; a record whose holder
	// died holding it is kept until the next holder takes the lease.
	Live bool `json:"live"`
}

// Lease returns key's lease: nil when nobody holds it and nobody died
// holding it.
func (d *Dir) Lease(key string) (*LeaseInfo, error) {
	root, err := d.current()
	if err != nil {
		return nil, err
	}
	name := leasePath(key)
	if err := d.noSymlink(root, name); err != nil {
		return nil, err
	}
	f, err := root.OpenFile(name, os.O_RDONLY, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, d.fileError(name, err)
	}
	defer f.Close()
	rec := readRecord(f)
	if rec == nil {
		return nil, nil // being taken or released right now
	}
	info := &LeaseInfo{LeaseHolder: *rec}
	switch err := tryLock(f, false); {
	case errors.Is(err, ErrLocked):
		info.Live = true
	case err == nil:
		unlock(f)
	default:
		return nil, err
	}
	return info, nil
}
