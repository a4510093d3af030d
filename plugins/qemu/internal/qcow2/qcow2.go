// Package qcow2 reads the internal snapshot table of a qcow2 image
// without taking QEMU's image locks, so that the driver can check a
// snapshot name, and whether it holds a running VM's state, in
// microseconds and while a VM has the image open.
package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
)

// Snapshot is one entry of an image's snapshot table.
type Snapshot struct {
	// ID is QEMU's numeric id, as text.
	ID string
	// Name is the snapshot's tag, what savevm and loadvm take.
	Name string
	// VMStateSize is the size of the saved VM state (RAM and devices) in
	// bytes; zero for a disk-only snapshot, which cannot be resumed.
	VMStateSize uint64
}

const magic = 0x514649fb // "QFI\xfb"

// maxSnapshots and maxTable bound what a corrupt header can make this
// read: QEMU itself keeps at most 65536 snapshots in a table of at most
// 64 MiB.
const (
	maxSnapshots = 65536
	maxTable     = 64 << 20
)

// Snapshots returns the snapshot table of the qcow2 image at path.
func Snapshots(path string) ([]Snapshot, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return Read(f, path)
}

// Read returns the snapshot table of the qcow2 image f, named path in
// errors. Whatever f holds, it reads at most 64 MiB of table.
func Read(f io.ReaderAt, path string) ([]Snapshot, error) {
	var h [72]byte
	if _, err := f.ReadAt(h[:], 0); err != nil {
		return nil, fmt.Errorf("%s: not a qcow2 image: %w", path, err)
	}
	be := binary.BigEndian
	if be.Uint32(h[0:]) != magic {
		return nil, fmt.Errorf("%s: not a qcow2 image (no QFI magic)", path)
	}
	version := be.Uint32(h[4:])
	if version != 2 && version != 3 {
		return nil, fmt.Errorf("%s: qcow2 version %d is not supported", path, version)
	}
	n := be.Uint32(h[60:])
	off := int64(be.Uint64(h[64:]))
	if n > maxSnapshots {
		return nil, fmt.Errorf("%s: header claims %d snapshots", path, n)
	}
	if off < 0 {
		return nil, fmt.Errorf("%s: header puts the snapshot table at offset %d", path, off)
	}
	out := make([]Snapshot, 0, n)
	r := &reader{f: f, off: off}
	for i := uint32(0); i < n; i++ {
		s, err := r.entry()
		if err != nil {
			return nil, fmt.Errorf("%s: snapshot table entry %d: %w", path, i, err)
		}
		if r.off-off > maxTable {
			return nil, fmt.Errorf("%s: the snapshot table is larger than %d bytes", path, maxTable)
		}
		out = append(out, s)
	}
	return out, nil
}

// Find returns the snapshot named name.
func Find(snaps []Snapshot, name string) (Snapshot, bool) {
	for _, s := range snaps {
		if s.Name == name {
			return s, true
		}
	}
	return Snapshot{}, false
}

type reader struct {
	f   io.ReaderAt
	off int64
}

func (r *reader) read(n int) ([]byte, error) {
	if r.off > math.MaxInt64-int64(n) {
		return nil, io.ErrUnexpectedEOF
	}
	b := make([]byte, n)
	if _, err := r.f.ReadAt(b, r.off); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, io.ErrUnexpectedEOF
		}
		return nil, err
	}
	r.off += int64(n)
	return b, nil
}

// entry reads one table entry: a fixed part, extra data, the id and the
// name, padded to 8 bytes.
func (r *reader) entry() (Snapshot, error) {
	start := r.off
	fixed, err := r.read(40)
	if err != nil {
		return Snapshot{}, err
	}
	be := binary.BigEndian
	idLen := int(be.Uint16(fixed[12:]))
	nameLen := int(be.Uint16(fixed[14:]))
	vmState := uint64(be.Uint32(fixed[32:]))
	extraLen := int(be.Uint32(fixed[36:]))
	if extraLen > 1<<16 {
		return Snapshot{}, fmt.Errorf("extra data of %d bytes", extraLen)
	}
	extra, err := r.read(extraLen)
	if err != nil {
		return Snapshot{}, err
	}
	// Version 3 keeps the full 64-bit VM state size in the extra data.
	if extraLen >= 8 {
		vmState = be.Uint64(extra[0:])
	}
	id, err := r.read(idLen)
	if err != nil {
		return Snapshot{}, err
	}
	name, err := r.read(nameLen)
	if err != nil {
		return Snapshot{}, err
	}
	if pad := (r.off - start) % 8; pad != 0 && r.off <= math.MaxInt64-8 {
		r.off += 8 - pad
	}
	return Snapshot{ID: string(id), Name: string(name), VMStateSize: vmState}, nil
}
