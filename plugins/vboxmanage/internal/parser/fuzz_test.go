package parser

import (
	"os"
	"path/filepath"
	"testing"
)

// seed adds every testdata sample to the corpus, so `go test` (without
// -fuzz) runs the fuzz bodies over the real samples too.
func seed(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "*.txt"))
	for _, name := range files {
		data, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	for _, s := range []string{"", "=", `"`, `""=`, `"a\`, "VMState=\r\n", "SnapshotName-1=x", "SnapshotName-=x",
		"\"\" {}", "\" {00000000-0000-0000-0000-000000000000}", "99999999999999.1.1"} {
		f.Add([]byte(s))
	}
}

func FuzzPairs(f *testing.F) {
	seed(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, p := range Pairs(data) {
			if p.Line < 1 {
				t.Fatalf("line %d", p.Line)
			}
		}
	})
}

func FuzzVMInfo(f *testing.F) {
	seed(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		info, err := ParseVMInfo(data)
		if err != nil {
			return
		}
		s := info.Snapshots
		if s.Current >= len(s.List) {
			t.Fatalf("current %d of %d", s.Current, len(s.List))
		}
		for i, sn := range s.List {
			if sn.Parent >= i {
				t.Fatalf("snapshot %d has parent %d after it", i, sn.Parent)
			}
		}
		_ = s.CurrentName()
	})
}

func FuzzSnapshotList(f *testing.F) {
	seed(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		s := ParseSnapshotList(data)
		_ = s.CurrentName()
		_ = s.Find(string(data))
	})
}

func FuzzList(f *testing.F) {
	seed(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, e := range ParseList(data) {
			if !isUUID(e.UUID) {
				t.Fatalf("bad uuid %q", e.UUID)
			}
		}
	})
}

func FuzzVersion(f *testing.F) {
	seed(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := ParseVersion(data)
		if err == nil && (v.Major < 0 || v.Minor < 0 || v.Patch < 0) {
			t.Fatalf("negative version %+v", v)
		}
	})
}

func FuzzLongList(f *testing.F) {
	seed(f)
	f.Add([]byte("UUID: x\n   Name: a (UUID: 00000000-0000-0000-0000-000000000000) *\n      Name: b (UUID: 00000000-0000-0000-0000-000000000000)\n"))
	f.Add([]byte("Name: a\nUUID: b\nState: running (since x)\n         Name: deep (UUID: 00000000-0000-0000-0000-000000000000)\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, e := range ParseLongList(data) {
			s := e.Snapshots
			if s.Current >= len(s.List) {
				t.Fatalf("current %d of %d", s.Current, len(s.List))
			}
			for i, sn := range s.List {
				if sn.Parent >= i || (sn.Depth == 0) != (sn.Parent == -1) {
					t.Fatalf("snapshot %d: parent %d depth %d", i, sn.Parent, sn.Depth)
				}
			}
		}
		_, _ = FindLong(ParseLongList(data), string(data))
	})
}
