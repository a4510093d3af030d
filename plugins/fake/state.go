package fake

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/gofrs/flock"
)

// worldFile is the file in state_dir that holds the world.
const worldFile = "world.json"

// worldVersion changes when the file's meaning does; an unknown version is
// refused rather than misread.
const worldVersion = 1

type world struct {
	Version int                `json:"version"`
	VMs     map[string]vmState `json:"vms"`
}

// loadWorld reads the world saved in dir; a dir without one gives none.
func loadWorld(dir string) (map[string]vmState, error) {
	path := filepath.Join(dir, worldFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var w world
	if err := json.Unmarshal(data, &w); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if w.Version != worldVersion {
		return nil, fmt.Errorf("%s: world version %d, this driver reads %d", path, w.Version, worldVersion)
	}
	return w.VMs, nil
}

// restoreState takes over the state a previous driver saved, keeping what
// the configuration still decides: the VM's snapshots.
func (v *vm) restoreState(st vmState) {
	if st.CurrentSnapshot != "" && !v.hasSnapshot(st.CurrentSnapshot) {
		st.CurrentSnapshot = v.st.CurrentSnapshot
	}
	if st.Pending != nil && st.Pending.Kind == kindRestore && !v.hasSnapshot(st.Pending.Snapshot) {
		st.Pending.Snapshot = st.CurrentSnapshot
	}
	v.st = st
	v.refreshFaults()
}

// A world in state_dir is shared by every plugin process that opens it,
// as a real hypervisor's VMs are shared by every client of its service:
// two sandbox processes each launch their own fake, and both must see one
// world. Every operation holds the world file's lock (worldLock, flock)
// besides the driver's mutex, reloads the world if another process saved
// it since, and saves what it changed before letting go.

// worldLock is the file in state_dir whose lock guards world.json.
const worldLock = "world.lock"

// sharedPoll is how often a wait for a state looks at the world again
// when another process may be the one changing it.
const sharedPoll = 25 * time.Millisecond

// sharedWorld is the cross-process side of a world kept in state_dir.
type sharedWorld struct {
	lock *flock.Flock
	// seen is world.json as this process last read or wrote it.
	seen os.FileInfo
}

// lock takes the world: the driver's mutex and, for a world in state_dir,
// its file lock, with the world brought up to date from the file.
func (d *Driver) lock() {
	d.mu.Lock()
	if d.shared == nil {
		return
	}
	if err := d.shared.lock.Lock(); err != nil {
		d.logger.Error("cannot lock the world; going on without", "dir", d.stateDir, "error", err)
		return
	}
	d.reloadLocked()
}

// unlock lets go of what lock took.
func (d *Driver) unlock() {
	if d.shared != nil {
		_ = d.shared.lock.Unlock()
	}
	d.mu.Unlock()
}

// reloadLocked takes over the world another process saved since this one
// last looked, waking waiters if anything changed.
func (d *Driver) reloadLocked() {
	path := filepath.Join(d.stateDir, worldFile)
	fi, err := os.Stat(path)
	if err != nil || (d.shared.seen != nil && os.SameFile(fi, d.shared.seen) &&
		fi.ModTime().Equal(d.shared.seen.ModTime()) && fi.Size() == d.shared.seen.Size()) {
		return
	}
	saved, err := loadWorld(d.stateDir)
	if err != nil {
		d.logger.Error("cannot reload the world", "dir", d.stateDir, "error", err)
		return
	}
	d.shared.seen = fi
	for name, st := range saved {
		if v, ok := d.vms[name]; ok {
			v.restoreState(st)
		}
	}
	close(d.changed)
	d.changed = make(chan struct{})
}

// saveLocked writes the world to state_dir, if there is one, through a
// temporary file so that a process killed mid-write leaves the previous
// world intact. A failure is logged: the simulated VMs carry on in memory.
func (d *Driver) saveLocked() {
	if d.stateDir == "" {
		return
	}
	w := world{Version: worldVersion, VMs: make(map[string]vmState, len(d.vms))}
	for name, v := range d.vms {
		w.VMs[name] = v.st
	}
	data, err := json.MarshalIndent(w, "", "  ")
	path := filepath.Join(d.stateDir, worldFile)
	if err == nil {
		err = writeFileAtomic(path, data)
	}
	if err != nil {
		d.logger.Error("cannot save the world", "dir", d.stateDir, "error", err)
		return
	}
	if d.shared != nil {
		if fi, err := os.Stat(path); err == nil {
			d.shared.seen = fi
		}
	}
}

func writeFileAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".world-*.tmp")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}
