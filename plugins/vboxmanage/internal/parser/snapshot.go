package parser

import (
	"strings"
)

// NoSnapshots is the text `snapshot list` and `snapshot restorecurrent`
// print on stdout, with exit status 1, for a VM without snapshots.
const NoSnapshots = "does not have any snapshots"

// Snapshot is one node of a VM's snapshot tree.
type Snapshot struct {
	// Name and UUID identify the snapshot. Names are printed unescaped and
	// need not be unique.
	Name string
	UUID string
	// Description is empty unless one was set.
	Description string
	// Node is the key the snapshot was printed under, e.g.
	// "SnapshotName-1-2": its place in the tree.
	Node string
	// Parent is the index of the parent in Snapshots.List, -1 for the root.
	Parent int
	// Depth is 0 for the root, 1 for its children, and so on.
	Depth int
}

// Snapshots is a VM's snapshot tree in depth-first pre-order, as printed.
type Snapshots struct {
	// List holds the snapshots in print order.
	List []Snapshot
	// Current is the index of the current snapshot in List, -1 if none.
	Current int
}

// CurrentName returns the current snapshot's name, or "".
func (s Snapshots) CurrentName() string {
	if s.Current < 0 || s.Current >= len(s.List) {
		return ""
	}
	return s.List[s.Current].Name
}

// Find returns the index of the first snapshot whose name or UUID (with or
// without braces) is ref, the way VirtualBox's FindSnapshot resolves an
// argument, or -1.
func (s Snapshots) Find(ref string) int {
	id := strings.TrimSuffix(strings.TrimPrefix(ref, "{"), "}")
	for i, sn := range s.List {
		if sn.UUID != "" && strings.EqualFold(sn.UUID, id) {
			return i
		}
	}
	for i, sn := range s.List {
		if sn.Name == ref {
			return i
		}
	}
	return -1
}

// ParseSnapshotList reads `snapshot list --machinereadable`. The "does not
// have any snapshots" message yields an empty tree; the caller sees the exit
// status separately.
func ParseSnapshotList(data []byte) Snapshots {
	return snapshotsFromPairs(Pairs(data))
}

// snapshotsFromPairs rebuilds the tree from SnapshotName<suffix> keys, where
// the suffix is "-i" per level (1-based), and finds the current snapshot by
// CurrentSnapshotNode, falling back to its UUID and then its name.
func snapshotsFromPairs(pairs []Pair) Snapshots {
	s := Snapshots{Current: -1}
	byNode := map[string]int{}
	var curNode, curUUID, curName string
	var haveNode, haveUUID, haveName bool
	for _, p := range pairs {
		switch {
		case p.Key == "CurrentSnapshotNode":
			if !haveNode {
				curNode, haveNode = p.Value, true
			}
		case p.Key == "CurrentSnapshotUUID":
			if !haveUUID {
				curUUID, haveUUID = p.Value, true
			}
		case p.Key == "CurrentSnapshotName":
			if !haveName {
				curName, haveName = p.Value, true
			}
		default:
			field, suffix, ok := snapshotKey(p.Key)
			if !ok {
				continue
			}
			node := "SnapshotName" + suffix
			i, exists := byNode[node]
			if !exists {
				if field != "Name" {
					continue
				}
				depth := strings.Count(suffix, "-")
				parent := -1
				if depth > 0 {
					pn := "SnapshotName" + suffix[:strings.LastIndexByte(suffix, '-')]
					pi, ok := byNode[pn]
					if !ok {
						continue // a child without its parent: not a tree we can trust
					}
					parent = pi
				}
				i = len(s.List)
				byNode[node] = i
				s.List = append(s.List, Snapshot{Node: node, Parent: parent, Depth: depth})
			}
			switch field {
			case "Name":
				if s.List[i].Name == "" {
					s.List[i].Name = p.Value
				}
			case "UUID":
				if s.List[i].UUID == "" {
					s.List[i].UUID = p.Value
				}
			case "Description":
				if s.List[i].Description == "" {
					s.List[i].Description = p.Value
				}
			}
		}
	}
	switch {
	case haveNode && byNodeHas(byNode, curNode):
		s.Current = byNode[curNode]
	case haveUUID:
		for i, sn := range s.List {
			if sn.UUID == curUUID {
				s.Current = i
				break
			}
		}
	}
	if s.Current < 0 && haveName {
		for i, sn := range s.List {
			if sn.Name == curName {
				s.Current = i
				break
			}
		}
	}
	return s
}

func byNodeHas(m map[string]int, k string) bool {
	_, ok := m[k]
	return ok
}

// snapshotKey splits "SnapshotUUID-1-2" into ("UUID", "-1-2"). The suffix
// must be a run of "-<digits>"; anything else is not a snapshot key.
func snapshotKey(key string) (field, suffix string, ok bool) {
	for _, f := range []string{"Name", "UUID", "Description"} {
		prefix := "Snapshot" + f
		if !strings.HasPrefix(key, prefix) {
			continue
		}
		suffix = key[len(prefix):]
		if validSuffix(suffix) {
			return f, suffix, true
		}
	}
	return "", "", false
}

func validSuffix(s string) bool {
	for s != "" {
		if s[0] != '-' || len(s) < 2 {
			return false
		}
		j := 1
		for j < len(s) && s[j] >= '0' && s[j] <= '9' {
			j++
		}
		if j == 1 {
			return false
		}
		s = s[j:]
	}
	return true
}
