package location

import (
	"errors"
	"os/exec"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeHost is a host whose files, environment and PATH are the given maps.
func fakeHost(goos string, env map[string]string, files []string, path map[string]string) Host {
	set := map[string]bool{}
	for _, f := range files {
		set[f] = true
	}
	return Host{
		GOOS:   goos,
		Getenv: func(k string) string { return env[k] },
		IsFile: func(p string) bool { return set[p] },
		LookPath: func(f string) (string, error) {
			if p, ok := path[f]; ok {
				return p, nil
			}
			return "", exec.ErrNotFound
		},
	}
}

func TestFind(t *testing.T) {
	cases := []struct {
		name string
		conf string
		host Host
		want string
	}{
		{"configured path wins", "/opt/vb/VBoxManage",
			fakeHost("linux", nil, []string{"/opt/vb/VBoxManage", "/usr/bin/VBoxManage"}, map[string]string{"VBoxManage": "/usr/bin/VBoxManage"}),
			"/opt/vb/VBoxManage"},
		{"windows MSI variable with trailing backslash", "",
			fakeHost("windows", map[string]string{"VBOX_MSI_INSTALL_PATH": `D:\VirtualBox\`}, []string{`D:\VirtualBox\VBoxManage.exe`, windowsDefault}, nil),
			`D:\VirtualBox\VBoxManage.exe`},
		{"windows old variable as a list, first dir with the binary", "",
			fakeHost("windows", map[string]string{"VBOX_INSTALL_PATH": `C:\nothing;E:\VB`}, []string{`E:\VB\VBoxManage.exe`}, nil),
			`E:\VB\VBoxManage.exe`},
		{"windows default install directory", "",
			fakeHost("windows", nil, []string{windowsDefault}, map[string]string{"VBoxManage": `C:\tools\VBoxManage.exe`}),
			windowsDefault},
		{"windows PATH last", "",
			fakeHost("windows", nil, nil, map[string]string{"VBoxManage": `C:\tools\VBoxManage.exe`}),
			`C:\tools\VBoxManage.exe`},
		{"macOS application bundle", "",
			fakeHost("darwin", nil, []string{macOSApp}, map[string]string{"VBoxManage": "/usr/local/bin/VBoxManage"}),
			macOSApp},
		{"linux PATH", "",
			fakeHost("linux", nil, nil, map[string]string{"VBoxManage": "/usr/bin/VBoxManage"}),
			"/usr/bin/VBoxManage"},
		{"linux lower-case link on PATH", "",
			fakeHost("linux", nil, nil, map[string]string{"vboxmanage": "/usr/bin/vboxmanage"}),
			"/usr/bin/vboxmanage"},
		{"linux without PATH finds the distribution binary", "",
			fakeHost("linux", nil, []string{"/usr/lib/virtualbox/VBoxManage"}, nil),
			"/usr/lib/virtualbox/VBoxManage"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := Find(c.conf, c.host)
			require.NoError(t, err)
			assert.Equal(t, c.want, got)
		})
	}
}

func TestFindSaysWhereItLooked(t *testing.T) {
	_, err := Find("", fakeHost("windows", map[string]string{"VBOX_INSTALL_PATH": `C:\a;C:\b\`}, nil, nil))
	var nf *NotFoundError
	require.True(t, errors.As(err, &nf))
	assert.Equal(t, []string{
		"$VBOX_MSI_INSTALL_PATH (unset)",
		`C:\a\VBoxManage.exe`,
		`C:\b\VBoxManage.exe`,
		windowsDefault,
		"VBoxManage on PATH",
	}, nf.Searched)
	assert.Contains(t, err.Error(), `C:\b\VBoxManage.exe`)

	_, err = Find("/missing/VBoxManage", fakeHost("linux", nil, []string{"/usr/bin/VBoxManage"}, map[string]string{"VBoxManage": "/usr/bin/VBoxManage"}))
	require.Error(t, err, "a wrong configured path is not silently replaced")
	assert.Contains(t, err.Error(), "/missing/VBoxManage (configured path")
}
