package parser

import (
	"errors"
	"strconv"
	"strings"
	"time"
)

// ErrNoState means showvminfo output carried no UUID and VMState and was
// not the short form printed for an inaccessible VM: the output is not a
// machine-readable dump at all.
var ErrNoState = errors.New("no VMState line in showvminfo output")

// Inaccessible is the name VirtualBox shows for a VM whose settings file
// it cannot read.
const Inaccessible = "<inaccessible>"

// VMInfo is what a driver needs from `showvminfo --machinereadable`.
// Singular keys take their first occurrence: a multi-line description is
// printed unescaped after the state lines, so a later "VMState=" line may
// be description text.
type VMInfo struct {
	// Name and UUID identify the VM.
	Name string
	UUID string
	// State is the raw VMState value, e.g. "aborted-saved"; empty for an
	// inaccessible VM.
	State string
	// StateChanged is VMStateChangeTime (UTC); zero if absent or malformed.
	StateChanged time.Time
	// HasSession reports a SessionName (SessionType before 5.0) line, which
	// VBoxManage prints only while a named session holds the machine.
	HasSession bool
	// SessionName is that line's value, e.g. "headless".
	SessionName string
	// GuestAdditionsRunLevel is 0..3, or -1 when the line is absent (it is
	// printed only while the VM runs).
	GuestAdditionsRunLevel int
	// Snapshots is the snapshot tree printed at the end of the dump.
	Snapshots Snapshots
	// Inaccessible reports the two-line form printed for a VM whose
	// settings VirtualBox cannot read.
	Inaccessible bool
	// Pairs is every key=value line, for callers that need more.
	Pairs []Pair
}

// Get returns the first value of key.
func (v *VMInfo) Get(key string) (string, bool) {
	for _, p := range v.Pairs {
		if p.Key == key {
			return p.Value, true
		}
	}
	return "", false
}

// ParseVMInfo reads `showvminfo --machinereadable` output.
func ParseVMInfo(data []byte) (*VMInfo, error) {
	info := &VMInfo{Pairs: Pairs(data), GuestAdditionsRunLevel: -1}
	seen := map[string]bool{}
	for _, p := range info.Pairs {
		if seen[p.Key] {
			continue
		}
		seen[p.Key] = true
		switch p.Key {
		case "name":
			info.Name = p.Value
		case "UUID":
			info.UUID = p.Value
		case "VMState":
			info.State = p.Value
		case "VMStateChangeTime":
			info.StateChanged = parseStateTime(p.Value)
		case "SessionName", "SessionType":
			if !info.HasSession {
				info.HasSession, info.SessionName = true, p.Value
			}
		case "GuestAdditionsRunLevel":
			if n, err := strconv.Atoi(p.Value); err == nil && n >= 0 {
				info.GuestAdditionsRunLevel = n
			}
		}
	}
	info.Snapshots = snapshotsFromPairs(info.Pairs)
	if info.State == "" || info.UUID == "" {
		if !seen["VMState"] && info.Name == Inaccessible && info.UUID != "" {
			info.Inaccessible = true
			return info, nil
		}
		return nil, ErrNoState
	}
	return info, nil
}

// parseStateTime reads VMStateChangeTime: UTC without a zone suffix (the
// printing buffer cuts the "Z"), nanosecond digits.
func parseStateTime(s string) time.Time {
	s = strings.TrimSuffix(s, "Z")
	t, err := time.ParseInLocation("2006-01-02T15:04:05.999999999", s, time.UTC)
	if err != nil {
		return time.Time{}
	}
	return t
}
