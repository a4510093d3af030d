package parser

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// ErrNoVersion means `VBoxManage --version` printed nothing that starts
// with a version number (it has been seen to print an empty line on
// Windows).
var ErrNoVersion = errors.New("no version number in VBoxManage --version output")

// Version is VirtualBox's version as `VBoxManage --version` prints it.
type Version struct {
	// Major, Minor and Patch are the leading numbers.
	Major, Minor, Patch int
	// Raw is the whole printed line, e.g. "6.1.34_Ubuntur150636"; the part
	// after the numbers (distribution tag, _BETA1, revision) is opaque.
	Raw string
}

var versionRe = regexp.MustCompile(`^(\d{1,6})\.(\d{1,6})\.(\d{1,6})`)

// ParseVersion reads `--version` output, skipping the Linux wrapper's
// WARNING lines and anything else before the first line that starts with
// major.minor.patch.
func ParseVersion(data []byte) (Version, error) {
	for _, l := range lines(data) {
		l = strings.TrimSpace(l)
		m := versionRe.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		v := Version{Raw: l}
		v.Major, _ = strconv.Atoi(m[1])
		v.Minor, _ = strconv.Atoi(m[2])
		v.Patch, _ = strconv.Atoi(m[3])
		return v, nil
	}
	return Version{}, ErrNoVersion
}

// AtLeast reports whether v is major.minor or newer.
func (v Version) AtLeast(major, minor int) bool {
	return v.Major > major || v.Major == major && v.Minor >= minor
}

// String returns the numeric version, e.g. "7.0.14".
func (v Version) String() string {
	return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Patch)
}
