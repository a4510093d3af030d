// Package location finds the VBoxManage executable the way an operator would
// expect on each host OS, and says where it looked when it cannot.
package location

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
)

// Host is what the search consults. Tests replace its functions to play a
// Windows or macOS host anywhere.
type Host struct {
	// GOOS is the host's operating system, as runtime.GOOS spells it.
	GOOS string
	// Getenv reads an environment variable.
	Getenv func(string) string
	// IsFile reports whether path is an existing regular file.
	IsFile func(path string) bool
	// LookPath searches PATH, like exec.LookPath.
	LookPath func(file string) (string, error)
}

// Local is the host this process runs on.
func Local() Host {
	return Host{
		GOOS:   runtime.GOOS,
		Getenv: os.Getenv,
		IsFile: func(p string) bool {
			st, err := os.Stat(p)
			return err == nil && st.Mode().IsRegular()
		},
		LookPath: exec.LookPath,
	}
}

// NotFoundError lists every place the search looked, in order, so that an
// operator can see why none of them qualified.
type NotFoundError struct {
	// Searched names each place, e.g. "$VBOX_MSI_INSTALL_PATH (unset)".
	Searched []string
}

// Error lists the places and says how to fix it.
func (e *NotFoundError) Error() string {
	return "VBoxManage not found; looked at " + strings.Join(e.Searched, ", ") +
		"; set path in the plugin's configuration"
}

// Windows install locations; the installer does not put VBoxManage on PATH.
const (
	windowsDefault = `C:\Program Files\Oracle\VirtualBox\VBoxManage.exe`
	macOSApp       = "/Applications/VirtualBox.app/Contents/MacOS/VBoxManage"
)

// Find returns the VBoxManage to run. A configured path is used alone: if
// the operator named one, silently running another would hide the mistake.
// Otherwise the search goes, on Windows, through $VBOX_MSI_INSTALL_PATH
// (MSI installers since 4.3.12) and $VBOX_INSTALL_PATH (older ones; either
// may be a ";" list of directories), the default install directory and
// PATH; on macOS through the application bundle and PATH; elsewhere through
// PATH and the directories distribution and .run packages install to,
// which matter when the plugin runs with a minimal environment.
func Find(configured string, h Host) (string, error) {
	if configured != "" {
		if h.IsFile(configured) {
			return configured, nil
		}
		return "", &NotFoundError{Searched: []string{fmt.Sprintf("%s (configured path: no such file)", configured)}}
	}
	var searched []string
	try := func(p string) bool {
		searched = append(searched, p)
		return h.IsFile(p)
	}
	switch h.GOOS {
	case "windows":
		for _, env := range []string{"VBOX_MSI_INSTALL_PATH", "VBOX_INSTALL_PATH"} {
			v := h.Getenv(env)
			if v == "" {
				searched = append(searched, "$"+env+" (unset)")
				continue
			}
			for _, dir := range strings.Split(v, ";") {
				if dir = strings.TrimSpace(dir); dir == "" {
					continue
				}
				if p := windowsJoin(dir, "VBoxManage.exe"); try(p) {
					return p, nil
				}
			}
		}
		if pf := h.Getenv("ProgramFiles"); pf != "" {
			if p := windowsJoin(pf, `Oracle\VirtualBox\VBoxManage.exe`); !strings.EqualFold(p, windowsDefault) && try(p) {
				return p, nil
			}
		}
		if try(windowsDefault) {
			return windowsDefault, nil
		}
	case "darwin":
		if try(macOSApp) {
			return macOSApp, nil
		}
	}
	names := []string{"VBoxManage"}
	if h.GOOS != "windows" {
		names = append(names, "vboxmanage")
	}
	for _, n := range names {
		if p, err := h.LookPath(n); err == nil {
			return p, nil
		}
		searched = append(searched, n+" on PATH")
	}
	switch h.GOOS {
	case "windows":
	case "darwin":
		if try("/usr/local/bin/VBoxManage") {
			return "/usr/local/bin/VBoxManage", nil
		}
	default:
		for _, p := range []string{"/usr/bin/VBoxManage", "/usr/local/bin/VBoxManage", "/usr/lib/virtualbox/VBoxManage", "/opt/VirtualBox/VBoxManage"} {
			if try(p) {
				return p, nil
			}
		}
	}
	return "", &NotFoundError{Searched: searched}
}

// windowsJoin joins with a backslash whatever the host running the search,
// tolerating the trailing backslash VBOX_MSI_INSTALL_PATH usually has.
func windowsJoin(dir, file string) string {
	return strings.TrimRight(dir, `\/`) + `\` + file
}
