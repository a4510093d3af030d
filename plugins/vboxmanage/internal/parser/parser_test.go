package parser

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var update = flag.Bool("update", false, "rewrite the .golden files from the parsers' output")

func readTestdata(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	require.NoError(t, err)
	return data
}

// golden compares got with testdata/<name>.golden, or rewrites it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		require.NoError(t, os.WriteFile(path, []byte(got), 0o644))
		return
	}
	want, err := os.ReadFile(path)
	require.NoError(t, err, "run go test -update to create it")
	assert.Equal(t, string(want), got)
}

func dumpPairs(ps []Pair) string {
	var b strings.Builder
	for _, p := range ps {
		fmt.Fprintf(&b, "%d\t%q\t%q\n", p.Line, p.Key, p.Value)
	}
	return b.String()
}

func TestVMInfoSampleA70LinuxRunning(t *testing.T) {
	data := readTestdata(t, "showvminfo-7.0-linux-running.txt")
	info, err := ParseVMInfo(data)
	require.NoError(t, err)
	assert.Equal(t, "build-vm", info.Name)
	assert.Equal(t, "4f8a3c1e-2b7d-4c0a-9e51-7d2c8b9a6f10", info.UUID)
	assert.Equal(t, "running", info.State)
	assert.Equal(t, time.Date(2024, 3, 5, 10, 15, 2, 123000000, time.UTC), info.StateChanged)
	assert.True(t, info.HasSession)
	assert.Equal(t, "headless", info.SessionName)
	assert.Equal(t, 2, info.GuestAdditionsRunLevel)
	assert.Equal(t, "clean", info.Snapshots.CurrentName())
	require.Len(t, info.Snapshots.List, 1)

	get := func(k string) string { v, _ := info.Get(k); return v }
	assert.Equal(t, "4096", get("memory"), "unquoted numbers keep their text")
	assert.Equal(t, "/home/ci/VirtualBox VMs/build-vm/build-vm.nvram", get("BIOS NVRAM File"), "keys with spaces")
	assert.Equal(t, `"800,600,32"@0,0 1`, get("VideoMode"), "half-quoted values are kept as printed")
	assert.Equal(t, "=0", get("VRDEClients"), "VRDEClients==0 splits at the first =")
	assert.Equal(t, "/home/ci/VirtualBox VMs/build-vm/build-vm.vdi", get("SATA-0-0"), "quoted keys")
	assert.Equal(t, "50,1709633710211", get("GuestAdditionsFacility_VirtualBox Base Driver"))
	assert.Equal(t, "vc_enabled=true,ac_enabled=false,ac_profile=med", get("rec_screen_opts"), "values may contain =")
	_, ok := info.Get("Encryption:     disabled")
	assert.False(t, ok, "a line without = is skipped")
	golden(t, "showvminfo-7.0-linux-running", dumpPairs(info.Pairs))
}

func TestVMInfoSampleB61WindowsPoweroff(t *testing.T) {
	data := readTestdata(t, "showvminfo-6.1-windows-poweroff.txt")
	require.Contains(t, string(data), "\r\n", "the sample keeps Windows line ends")
	info, err := ParseVMInfo(data)
	require.NoError(t, err)
	assert.Equal(t, "win10", info.Name)
	assert.Equal(t, "poweroff", info.State)
	assert.False(t, info.HasSession)
	assert.Equal(t, -1, info.GuestAdditionsRunLevel)
	get := func(k string) string { v, _ := info.Get(k); return v }
	assert.Equal(t, `C:\Users\ci\VirtualBox VMs\win10\win10.vbox`, get("CfgFile"), "escaped path is unescaped")
	assert.Equal(t, `C:\Users\ci\VirtualBox VMs\win10\win10.vdi`, get("SATA-0-0"), "raw path is kept")
	assert.Equal(t, `C:\share`, get("SharedFolderPathMachineMapping1"))
	require.Len(t, info.Snapshots.List, 2)
	assert.Equal(t, "after-install", info.Snapshots.CurrentName())
	assert.Equal(t, 0, info.Snapshots.List[1].Parent)
	assert.Equal(t, 1, info.Snapshots.List[1].Depth)
	golden(t, "showvminfo-6.1-windows-poweroff", dumpPairs(info.Pairs))
}

func TestVMInfoIrregularLines(t *testing.T) {
	info, err := ParseVMInfo(readTestdata(t, "showvminfo-5.1-linux-irregular.txt"))
	require.NoError(t, err)
	assert.Equal(t, `odd "name" vm`, info.Name)
	assert.Equal(t, "aborted", info.State, "the first VMState wins over description text")
	assert.Equal(t, `base "clean"`, info.Snapshots.CurrentName(), "unescaped snapshot names keep inner quotes")
	get := func(k string) string { v, _ := info.Get(k); return v }
	assert.Equal(t, "0", get("VRDEClients"))
	assert.Equal(t, "<not set>", get("vrdeproperty[VideoChannel/Quality]"))
	assert.Equal(t, "limit,Disk,1048576", get("BandwidthGroup0"))
	assert.Equal(t, `file,C:\tmp\com1.txt`, get("uartmode1"), "unknown escapes stay literal")
	assert.True(t, strings.HasSuffix(get("cpuid"), `hwvirtex="on"`), "a glued cpuid line stays one value")
	var ejected []string
	for _, p := range info.Pairs {
		if p.Key == "IDE Controller-IsEjected" {
			ejected = append(ejected, p.Value)
		}
	}
	assert.Equal(t, []string{"off", "on"}, ejected, "repeated keys are all kept")
	golden(t, "showvminfo-5.1-linux-irregular", dumpPairs(info.Pairs))
}

func TestVMInfoInaccessible(t *testing.T) {
	info, err := ParseVMInfo(readTestdata(t, "showvminfo-inaccessible.txt"))
	require.NoError(t, err)
	assert.True(t, info.Inaccessible)
	assert.Equal(t, "a30b7f86-d30a-41b8-9dbc-cb1ea02e55c4", info.UUID)
}

func TestVMInfoRejectsOutputWithoutState(t *testing.T) {
	for _, in := range []string{"", "garbage\x00\xff", "name=\"x\"\n", "VMState=\nUUID=\"x\"\n", "VMState=\"running\"\n", "Oracle VM VirtualBox Command Line Management Interface"} {
		_, err := ParseVMInfo([]byte(in))
		assert.ErrorIs(t, err, ErrNoState, "%q", in)
	}
}

func TestSplitPairEdgeCases(t *testing.T) {
	cases := []struct{ line, key, value string }{
		{`a="b"`, "a", "b"},
		{`a=""`, "a", ""},
		{`a="`, "a", `"`},
		{`"k\"ey"="v"`, `k"ey`, "v"},
		{`"SATA-1-0"="emptydrive"`, "SATA-1-0", "emptydrive"},
		{`"unterminated=1`, `"unterminated`, "1"},
		{`x="C:\\dir\\"`, "x", `C:\dir\`},
		{`x="C:\dir\"`, "x", `C:\dir\`},
		{`=v`, "", "v"},
	}
	for _, c := range cases {
		k, v, ok := splitPair(c.line)
		require.True(t, ok, c.line)
		assert.Equal(t, c.key, k, c.line)
		assert.Equal(t, c.value, v, c.line)
	}
	_, _, ok := splitPair(" rec_screen0")
	assert.False(t, ok)
}

func TestParseList(t *testing.T) {
	got := ParseList(readTestdata(t, "list-vms.txt"))
	assert.Equal(t, []Entry{
		{Name: "Debian", UUID: "93a38cd7-ef00-47aa-9868-d291d4ed5e0a"},
		{Name: Inaccessible, UUID: "a30b7f86-d30a-41b8-9dbc-cb1ea02e55c4"},
		{Name: `my "quoted" {vm}`, UUID: "4f8a3c1e-2b7d-4c0a-9e51-7d2c8b9a6f10"},
		{Name: "win 10; rm -rf /", UUID: "c1d2e3f4-0a1b-4c2d-8e3f-405162738495"},
	}, got)
	assert.Empty(t, ParseList(nil), "no VMs is empty output")
	crlf := strings.ReplaceAll(string(readTestdata(t, "list-vms.txt")), "\n", "\r\n")
	assert.Equal(t, got, ParseList([]byte("WARNING: junk {x}\n"+crlf)))
}

func TestParseSnapshotList(t *testing.T) {
	s := ParseSnapshotList(readTestdata(t, "snapshot-list-tree.txt"))
	require.Len(t, s.List, 4)
	assert.Equal(t, "grandchild", s.CurrentName())
	assert.Equal(t, []int{-1, 0, 1, 0}, []int{s.List[0].Parent, s.List[1].Parent, s.List[2].Parent, s.List[3].Parent})
	assert.Equal(t, "base install", s.List[0].Description)
	assert.Equal(t, 2, s.Find("8f73d6ff-0000-4000-8000-000000000003"))
	assert.Equal(t, 2, s.Find("{8f73d6ff-0000-4000-8000-000000000003}"))
	assert.Equal(t, 3, s.Find("child two"))
	assert.Equal(t, -1, s.Find("missing"))

	empty := ParseSnapshotList([]byte("This machine does not have any snapshots\n"))
	assert.Empty(t, empty.List)
	assert.Equal(t, "", empty.CurrentName())
}

func TestParseVersion(t *testing.T) {
	cases := map[string]string{
		"7.0.14r161095\n":      "7.0.14",
		"6.1.38r153438\r\n":    "6.1.38",
		"5.0.4r102546":         "5.0.4",
		"6.1.34_Ubuntur150636": "6.1.34",
		"4.1.8r1234_OSE":       "4.1.8",
		"4.1.8_MacPortsr1234":  "4.1.8",
		"7.1.0_BETA1r164697":   "7.1.0",
		"7.0.0_RC1r155230":     "7.0.0",
	}
	for in, want := range cases {
		v, err := ParseVersion([]byte(in))
		require.NoError(t, err, in)
		assert.Equal(t, want, v.String(), in)
	}
	v, err := ParseVersion(readTestdata(t, "version-linux-wrapper.txt"))
	require.NoError(t, err)
	assert.Equal(t, "6.1.34_Ubuntur150636", v.Raw)
	assert.True(t, v.AtLeast(6, 1))
	assert.False(t, v.AtLeast(7, 0))

	for _, in := range []string{"", "\r\n", "WARNING: The vboxdrv kernel module is not loaded.\n"} {
		_, err := ParseVersion([]byte(in))
		assert.ErrorIs(t, err, ErrNoVersion, "%q", in)
	}
}

func TestParseLongList(t *testing.T) {
	entries := ParseLongList(readTestdata(t, "list-long-vms-6.1-windows.txt"))
	require.Len(t, entries, 4)

	win := entries[0]
	assert.Equal(t, "win10", win.Name)
	assert.Equal(t, "93a38cd7-ef00-47aa-9868-d291d4ed5e0a", win.UUID)
	assert.Equal(t, "poweroff", win.State)
	assert.True(t, win.KnownState)
	assert.Equal(t, time.Date(2024, 3, 5, 9, 58, 41, 0, time.UTC), win.Since)
	assert.True(t, win.HasSession, "a powered-off VM whose process still holds the session")
	assert.Equal(t, "headless", win.SessionName)
	require.Len(t, win.Snapshots.List, 4)
	assert.Equal(t, "after-install", win.Snapshots.CurrentName())
	assert.Equal(t, []int{-1, 0, 0, -1}, []int{win.Snapshots.List[0].Parent, win.Snapshots.List[1].Parent, win.Snapshots.List[2].Parent, win.Snapshots.List[3].Parent})
	assert.Equal(t, "odd (UUID: 1) name", win.Snapshots.List[2].Name)

	gui := entries[1]
	assert.Equal(t, `build vm "x"`, gui.Name)
	assert.Equal(t, "gurumeditation", gui.State)
	assert.Equal(t, "GUI/Qt", gui.SessionName)
	assert.Empty(t, gui.Snapshots.List)
	assert.Equal(t, -1, gui.Snapshots.Current)

	assert.True(t, entries[2].Inaccessible)
	assert.Equal(t, Inaccessible, entries[2].Name)
	assert.Equal(t, "", entries[2].State)

	assert.Equal(t, "hibernating", entries[3].State, "an unknown state is kept as printed")
	assert.False(t, entries[3].KnownState)

	e, ok := FindLong(entries, "{4F8A3C1E-2B7D-4C0A-9E51-7D2C8B9A6F10}")
	require.True(t, ok)
	assert.Equal(t, `build vm "x"`, e.Name)
	_, ok = FindLong(entries, Inaccessible)
	assert.False(t, ok, "an inaccessible VM cannot be addressed by that name")
	_, ok = FindLong(entries, "nope")
	assert.False(t, ok)
}
