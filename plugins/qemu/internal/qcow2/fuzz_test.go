package qcow2_test

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/sandboxhq/sandbox/plugins/qemu/internal/qcow2"
)

// image is a qcow2 header whose snapshot table, at offset 72, holds
// entries: what qemu-img writes, without the clusters.
func image(version uint32, entries ...[]byte) []byte {
	h := make([]byte, 72)
	be := binary.BigEndian
	be.PutUint32(h[0:], 0x514649fb)
	be.PutUint32(h[4:], version)
	be.PutUint32(h[60:], uint32(len(entries)))
	be.PutUint64(h[64:], 72)
	for _, e := range entries {
		h = append(h, e...)
	}
	return h
}

// entry is one snapshot table entry, padded to 8 bytes.
func entry(id, name string, vmState uint64, extra int) []byte {
	e := make([]byte, 40+extra)
	be := binary.BigEndian
	be.PutUint16(e[12:], uint16(len(id)))
	be.PutUint16(e[14:], uint16(len(name)))
	be.PutUint32(e[36:], uint32(extra))
	if extra >= 8 {
		be.PutUint64(e[40:], vmState)
	}
	e = append(append(e, id...), name...)
	for len(e)%8 != 0 {
		e = append(e, 0)
	}
	return e
}

// The reader takes any bytes (an image a guest's QEMU could have written)
// without panicking or reading past its bounds, and every entry it returns
// was in the bytes.
func FuzzSnapshotTable(f *testing.F) {
	f.Add(image(3, entry("1", "ready", 1<<20, 16), entry("2", "ready-ignore-acpi", 0, 16)))
	f.Add(image(2, entry("1", "data", 0, 0)))
	f.Add(image(3))
	f.Add([]byte("QFI\xfb"))
	f.Fuzz(func(t *testing.T, data []byte) {
		snaps, err := qcow2.Read(bytes.NewReader(data), "fuzz.qcow2")
		if err != nil {
			return
		}
		for _, s := range snaps {
			if !bytes.Contains(data, []byte(s.Name)) || !bytes.Contains(data, []byte(s.ID)) {
				t.Fatalf("entry %+v is not in the image", s)
			}
		}
	})
}
