package parser

import (
	"strings"
	"time"
)

// LongEntry is one VM's block of `list --long vms`, which prints the
// human-format showvminfo of every VM without taking any session lock.
type LongEntry struct {
	// Name and UUID identify the VM.
	Name string
	UUID string
	// State is the VMState short word ("poweroff") when the long name is
	// one VBoxManage prints, otherwise the long name as printed.
	State string
	// KnownState reports that State was mapped from a known long name.
	KnownState bool
	// Since is the time in the State line's "(since ...)"; zero if absent.
	Since time.Time
	// HasSession reports a "Session name:" line ("Session type:" before
	// 5.0), which VBoxManage prints under the same condition as
	// showvminfo's SessionName: while a session with a name holds the
	// machine or is being unlocked.
	HasSession bool
	// SessionName is that line's value, e.g. "headless".
	SessionName string
	// Snapshots is the snapshot tree; Current is set from the "*" mark.
	Snapshots Snapshots
	// Inaccessible reports a VM whose settings VirtualBox cannot read.
	Inaccessible bool
}

// longStates maps the human-format state names to VMState words.
var longStates = map[string]string{
	"powered off":                   "poweroff",
	"saved":                         "saved",
	"teleported":                    "teleported",
	"aborted":                       "aborted",
	"aborted-saved":                 "aborted-saved",
	"running":                       "running",
	"paused":                        "paused",
	"guru meditation":               "gurumeditation",
	"teleporting":                   "teleporting",
	"live snapshotting":             "livesnapshotting",
	"starting":                      "starting",
	"stopping":                      "stopping",
	"saving":                        "saving",
	"restoring":                     "restoring",
	"teleporting paused vm":         "teleportingpausedvm",
	"teleporting (incoming)":        "teleportingin",
	"fault tolerant syncing":        "faulttolerantsyncing",
	"deleting snapshot live":        "deletingsnapshotlive",
	"deleting snapshot live paused": "deletingsnapshotlivepaused",
	"online snapshotting":           "onlinesnapshotting",
	"restoring snapshot":            "restoringsnapshot",
	"deleting snapshot":             "deletingsnapshot",
	"setting up":                    "settingup",
	"offline snapshotting":          "snapshotting",
}

// ParseLongList reads `list --long vms` (or one human-format showvminfo).
//
// Only a few lines matter and the format has no delimiters, so blocks are
// found by their column-0 "UUID:" line, which each VM's dump has exactly
// once; its name is the column-0 "Name:" line before it (other column-0
// "Name:" lines, such as shared folders', come after the UUID and are
// overridden by the next VM's). Labels are padded differently across
// versions, so a line is split at its first colon. Snapshot lines are the
// indented "Name: <name> (UUID: <uuid>)" lines, three spaces per level,
// " *" marking the current one.
func ParseLongList(data []byte) []LongEntry {
	var (
		out      []LongEntry
		lastName string
		cur      *LongEntry
		byNode   []int // index of the last snapshot seen at each depth
	)
	for _, l := range lines(data) {
		if l == "" {
			continue
		}
		if l[0] != ' ' {
			label, value, ok := strings.Cut(l, ":")
			if !ok {
				continue
			}
			value = strings.TrimSpace(value)
			switch label {
			case "Name":
				lastName = value
			case "UUID":
				out = append(out, LongEntry{Name: lastName, UUID: value, Snapshots: Snapshots{Current: -1}})
				cur = &out[len(out)-1]
				byNode = byNode[:0]
				if lastName == "<inaccessible!>" || lastName == Inaccessible {
					cur.Name, cur.Inaccessible = Inaccessible, true
				}
			case "State":
				if cur != nil && cur.State == "" {
					cur.State, cur.KnownState, cur.Since = parseLongState(value)
				}
			case "Session name", "Session type":
				if cur != nil && !cur.HasSession {
					cur.HasSession, cur.SessionName = true, value
				}
			}
			continue
		}
		if cur == nil {
			continue
		}
		name, uuid, current, depth, ok := snapshotLine(l)
		if !ok || depth > len(byNode) {
			continue
		}
		parent := -1
		if depth > 0 {
			parent = byNode[depth-1]
		}
		byNode = append(byNode[:depth], len(cur.Snapshots.List))
		cur.Snapshots.List = append(cur.Snapshots.List, Snapshot{Name: name, UUID: uuid, Parent: parent, Depth: depth})
		if current {
			cur.Snapshots.Current = len(cur.Snapshots.List) - 1
		}
	}
	return out
}

// parseLongState reads "powered off (since 2024-03-05T09:58:41.000000000)".
func parseLongState(v string) (state string, known bool, since time.Time) {
	long := v
	if i := strings.LastIndex(v, " (since "); i >= 0 && strings.HasSuffix(v, ")") {
		long = v[:i]
		since = parseStateTime(v[i+len(" (since ") : len(v)-1])
	}
	long = strings.TrimSpace(long)
	if s, ok := longStates[strings.ToLower(long)]; ok {
		return s, true, since
	}
	return long, false, since
}

// snapshotLine reads "   Name: clean (UUID: 8f73d6ff-...) *": depth 0 at
// three spaces, one more level per three more. The name is unescaped and
// may itself contain " (UUID: ", so the UUID is taken from the right.
func snapshotLine(l string) (name, uuid string, current bool, depth int, ok bool) {
	trimmed := strings.TrimLeft(l, " ")
	indent := len(l) - len(trimmed)
	if indent < 3 || indent%3 != 0 || !strings.HasPrefix(trimmed, "Name: ") {
		return "", "", false, 0, false
	}
	rest := strings.TrimSuffix(trimmed[len("Name: "):], " ")
	if strings.HasSuffix(rest, " *") {
		rest, current = strings.TrimSuffix(rest, " *"), true
	}
	i := strings.LastIndex(rest, " (UUID: ")
	if i < 0 || !strings.HasSuffix(rest, ")") {
		return "", "", false, 0, false
	}
	uuid = rest[i+len(" (UUID: ") : len(rest)-1]
	if !isUUID(uuid) {
		return "", "", false, 0, false
	}
	return rest[:i], uuid, current, indent/3 - 1, true
}

// FindLong returns the entry for ref, a VM name or UUID (braces
// optional), the way VBoxManage resolves a VM argument.
func FindLong(entries []LongEntry, ref string) (LongEntry, bool) {
	id := strings.TrimSuffix(strings.TrimPrefix(ref, "{"), "}")
	for _, e := range entries {
		if strings.EqualFold(e.UUID, id) {
			return e, true
		}
	}
	for _, e := range entries {
		if e.Name == ref && !e.Inaccessible {
			return e, true
		}
	}
	return LongEntry{}, false
}
