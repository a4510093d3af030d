package parser

import "strings"

// Entry is one line of `list vms` or `list runningvms`.
type Entry struct {
	// Name is the VM's name, exactly as registered ("<inaccessible>" for a
	// VM whose settings cannot be read).
	Name string
	// UUID is the VM's UUID without braces.
	UUID string
}

// ParseList reads `list vms` / `list runningvms` output: `"<name>" {<uuid>}`
// per line. Names are printed without escaping and may contain quotes and
// braces, so a line is read from the right: the UUID is between the last
// " {" and the final "}", the name is what is left inside the outer quotes.
// Lines of any other shape (wrapper warnings) are skipped.
func ParseList(data []byte) []Entry {
	var out []Entry
	for _, l := range lines(data) {
		if !strings.HasSuffix(l, "}") {
			continue
		}
		i := strings.LastIndex(l, " {")
		if i < 0 {
			continue
		}
		uuid := l[i+2 : len(l)-1]
		quoted := l[:i]
		if len(quoted) < 2 || quoted[0] != '"' || quoted[len(quoted)-1] != '"' || !isUUID(uuid) {
			continue
		}
		out = append(out, Entry{Name: quoted[1 : len(quoted)-1], UUID: uuid})
	}
	return out
}

// isUUID accepts the 8-4-4-4-12 hex form VirtualBox prints.
func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i, c := range s {
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
				return false
			}
		}
	}
	return true
}

// IsUUID reports whether s is a VM or snapshot UUID, with or without braces,
// as VBoxManage accepts it in place of a name.
func IsUUID(s string) bool {
	return isUUID(strings.TrimSuffix(strings.TrimPrefix(s, "{"), "}"))
}
