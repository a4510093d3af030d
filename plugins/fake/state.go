package fake

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
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
	if err == nil {
		err = writeFileAtomic(filepath.Join(d.stateDir, worldFile), data)
	}
	if err != nil {
		d.logger.Error("cannot save the world", "dir", d.stateDir, "error", err)
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
