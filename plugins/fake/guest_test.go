package fake

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

// guestWith opens a fake whose VM "a" is running with a ready guest and
// the given files copied into it.
func guestWith(t *testing.T, files map[string][]byte) *Driver {
	t.Helper()
	d := newFake(t, "[vms.a]\nstate = \"running\"\nsnapshots = [\"clean\"]")
	host := t.TempDir()
	for guestPath, data := range files {
		src := filepath.Join(host, "src")
		require.NoError(t, os.WriteFile(src, data, 0o644))
		require.NoError(t, d.CopyIn(testCtx(t), "a", src, guestPath))
	}
	return d
}

func exec(t *testing.T, d *Driver, path string, args ...string) hypervisor.ExecResult {
	t.Helper()
	res, err := d.Exec(testCtx(t), "a", hypervisor.ExecRequest{Path: path, Args: args})
	require.NoError(t, err)
	return res
}

func TestCopyInThenCopyOutRoundTrips(t *testing.T) {
	t.Parallel()
	payload := []byte("sample bytes\x00\xff")
	d := guestWith(t, map[string][]byte{`C:\Users\analyst\sample.exe`: payload})
	out := filepath.Join(t.TempDir(), "back")
	require.NoError(t, d.CopyOut(testCtx(t), "a", "/Users/analyst/sample.exe", out))
	got, err := os.ReadFile(out)
	require.NoError(t, err)
	assert.Equal(t, payload, got)
	assert.Equal(t, []string{"copy-in", "copy-out"}, journalOps(d))
	assert.Equal(t, `C:\Users\analyst\sample.exe`, d.Journal()[0].Path)
}

func TestCopyErrorsAreFailures(t *testing.T) {
	t.Parallel()
	d := guestWith(t, map[string][]byte{"/dir/file": []byte("x")})
	host := t.TempDir()
	requireCode(t, d.CopyIn(testCtx(t), "a", filepath.Join(host, "missing"), "/x"), hypervisor.CodeFailed, hypervisor.OpCopyIn, "a")
	requireCode(t, d.CopyOut(testCtx(t), "a", "/missing", filepath.Join(host, "out")), hypervisor.CodeFailed, hypervisor.OpCopyOut, "a")
	requireCode(t, d.CopyOut(testCtx(t), "a", "/dir", filepath.Join(host, "out")), hypervisor.CodeFailed, hypervisor.OpCopyOut, "a")
	requireCode(t, d.CopyOut(testCtx(t), "a", "/dir/file", filepath.Join(host, "no", "such", "dir")), hypervisor.CodeFailed, hypervisor.OpCopyOut, "a")
}

func TestGuestOperationsNeedARunningVMWithItsGuestReady(t *testing.T) {
	t.Parallel()
	d := newFake(t, "[timing]\nstart = \"0s\"\nguest_ready = \"1h\"\n[vms.off]\n[vms.booting]")
	require.NoError(t, d.Start(testCtx(t), "booting"))
	src := filepath.Join(t.TempDir(), "f")
	require.NoError(t, os.WriteFile(src, nil, 0o644))
	for _, tc := range []struct {
		vm, msg string
	}{
		{"off", "Machine 'off' is not currently running."},
		{"booting", "The guest execution service is not ready (yet)."},
	} {
		e := requireCode(t, d.CopyIn(testCtx(t), tc.vm, src, "/f"), hypervisor.CodeInvalidState, hypervisor.OpCopyIn, tc.vm)
		assert.Equal(t, tc.msg, e.Message)
		_, err := d.Exec(testCtx(t), tc.vm, hypervisor.ExecRequest{Path: "echo"})
		requireCode(t, err, hypervisor.CodeInvalidState, hypervisor.OpExec, tc.vm)
		requireCode(t, d.CopyOut(testCtx(t), tc.vm, "/f", src), hypervisor.CodeInvalidState, hypervisor.OpCopyOut, tc.vm)
	}
}

func TestTheGuestBecomesReadyAfterGuestReady(t *testing.T) {
	t.Parallel()
	d := newFake(t, "[timing]\nstart = \"0s\"\nguest_ready = \"500ms\"\n[vms.a]")
	require.NoError(t, d.Start(testCtx(t), "a"))
	_, err := d.Exec(testCtx(t), "a", hypervisor.ExecRequest{Path: "true"})
	requireCode(t, err, hypervisor.CodeInvalidState, hypervisor.OpExec, "a")
	waitGuest(t, d, "a")
}

// waitGuest waits until the VM's guest runs commands. Readiness is not part
// of Status, so it retries as a caller would, under a deadline.
func waitGuest(t *testing.T, d *Driver, vm string) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(waitLimit)
	for {
		_, err := d.Exec(testCtx(t), vm, hypervisor.ExecRequest{Path: "true"})
		if err == nil {
			return
		}
		requireCode(t, err, hypervisor.CodeInvalidState, hypervisor.OpExec, vm)
		select {
		case <-tick.C:
		case <-deadline:
			require.FailNow(t, "the guest never became ready")
		}
	}
}

func TestBuiltInCommands(t *testing.T) {
	t.Parallel()
	eicarFile := append([]byte("prefix "), eicar...)
	d := guestWith(t, map[string][]byte{
		"/samples/eicar.com": eicarFile,
		"/samples/notes.txt": []byte("harmless\n"),
	})
	sum := sha256.Sum256([]byte("harmless\n"))
	for _, tc := range []struct {
		name   string
		path   string
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{"echo joins its arguments", "echo", []string{"hello", "guest"}, 0, "hello guest\n", ""},
		{"echo -n omits the newline", "/bin/echo", []string{"-n", "x"}, 0, "x", ""},
		{"program names are case-sensitive", `C:\Tools\ECHO.EXE`, nil, 127, "", "sh: 1: C:\\Tools\\ECHO.EXE: not found\n"},
		{"a Windows path with .exe finds the built-in", `C:\Tools\echo.exe`, []string{"hi"}, 0, "hi\n", ""},
		{"cat prints a file", "cat", []string{`\samples\notes.txt`}, 0, "harmless\n", ""},
		{"cat of a missing file fails like cat", "cat", []string{"/nope"}, 1, "", "cat: /nope: No such file or directory\n"},
		{"cat of a directory fails", "cat", []string{"/samples"}, 1, "", "cat: /samples: Is a directory\n"},
		{"ls lists the root", "ls", nil, 0, "samples\n", ""},
		{"ls lists a directory sorted", "ls", []string{"/samples"}, 0, "eicar.com\nnotes.txt\n", ""},
		{"ls of a missing path fails like ls", "ls", []string{"/nope"}, 2, "", "ls: cannot access '/nope': No such file or directory\n"},
		{"exit returns its status", "exit", []string{"3"}, 3, "", ""},
		{"exit status is one byte", "exit", []string{"257"}, 1, "", ""},
		{"exit of a non-number fails", "exit", []string{"x"}, 2, "", "sh: 1: exit: Illegal number: x\n"},
		{"true", "true", nil, 0, "", ""},
		{"false", "false", nil, 1, "", ""},
		{"sha256sum hashes a file", "sha256sum", []string{"/samples/notes.txt"}, 0,
			fmt.Sprintf("%x  /samples/notes.txt\n", sum), ""},
		{"sha256sum of a missing file fails", "sha256sum", []string{"/nope"}, 1, "", "sha256sum: /nope: No such file or directory\n"},
		{"scan finds the EICAR test string", "scan", []string{"/samples/eicar.com"}, 1, "infected\n", ""},
		{"scan passes a clean file", "scan", []string{"/samples/notes.txt"}, 0, "clean\n", ""},
		{"scan of a missing file fails", "scan", []string{"/nope"}, 2, "", "scan: /nope: No such file or directory\n"},
		{"sleep of a moment completes", "sleep", []string{"0.01"}, 0, "", ""},
		{"sleep takes Go durations", "sleep", []string{"10ms"}, 0, "", ""},
		{"sleep rejects nonsense", "sleep", []string{"forever"}, 1, "", "sleep: invalid time interval 'forever'\n"},
		{"an unknown command exits 127 like a shell", "powershell.exe", []string{"-c", "x"}, 127, "", "sh: 1: powershell.exe: not found\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := exec(t, d, tc.path, tc.args...)
			assert.Equal(t, tc.code, res.ExitCode)
			assert.Equal(t, tc.stdout, string(res.Stdout))
			assert.Equal(t, tc.stderr, string(res.Stderr))
		})
	}
}

func TestExecOutputIsBounded(t *testing.T) {
	t.Parallel()
	d := guestWith(t, map[string][]byte{"/big": bytes.Repeat([]byte("x"), MaxOutput+100)})
	res := exec(t, d, "cat", "/big", "/big")
	assert.Len(t, res.Stdout, MaxOutput)
}

func TestExecKillsACommandAtItsTimeout(t *testing.T) {
	t.Parallel()
	d := guestWith(t, nil)
	start := time.Now()
	_, err := d.Exec(testCtx(t), "a", hypervisor.ExecRequest{Path: "sleep", Args: []string{"10"}, Timeout: 50 * time.Millisecond})
	e := requireCode(t, err, hypervisor.CodeTimeout, hypervisor.OpExec, "a")
	assert.Contains(t, e.Message, "killed")
	assert.Less(t, time.Since(start), time.Second)

	res, err := d.Exec(testCtx(t), "a", hypervisor.ExecRequest{Path: "sleep", Args: []string{"10ms"}, Timeout: time.Second})
	require.NoError(t, err, "a command that finishes in time is a result")
	assert.Equal(t, 0, res.ExitCode)

	_, err = d.Exec(plugintest.Context(t, 50*time.Millisecond), "a", hypervisor.ExecRequest{Path: "sleep", Args: []string{"10"}})
	requireCode(t, err, hypervisor.CodeTimeout, hypervisor.OpExec, "a")
	assert.Equal(t, "timeout", d.Journal()[len(d.Journal())-1].Outcome)
}

func TestGuestPathsCannotEscapeTheGuest(t *testing.T) {
	t.Parallel()
	d := guestWith(t, nil)
	outside := t.TempDir()
	secret := filepath.Join(outside, "secret")
	require.NoError(t, os.WriteFile(secret, []byte("host secret"), 0o644))
	src := filepath.Join(t.TempDir(), "payload")
	require.NoError(t, os.WriteFile(src, []byte("payload"), 0o644))

	for _, p := range []string{"../../../../escape", `..\..\..\escape`, "/../../escape", `C:\..\..\escape`} {
		require.NoError(t, d.CopyIn(testCtx(t), "a", src, p), p)
	}
	res := exec(t, d, "ls")
	assert.Equal(t, "escape\n", string(res.Stdout), "every .. stopped at the guest's root")
	assert.NoFileExists(t, filepath.Join(d.scratch, "escape"))
	assert.NoFileExists(t, filepath.Join(d.scratch, "a", "escape"))

	// A symlink planted in the guest's disk must not lead out of it.
	disk := filepath.Join(d.scratch, "a", "disk-0")
	require.NoError(t, os.Symlink(secret, filepath.Join(disk, "link")))
	require.NoError(t, os.Symlink(outside, filepath.Join(disk, "dirlink")))
	out := filepath.Join(t.TempDir(), "out")
	requireCode(t, d.CopyOut(testCtx(t), "a", "/link", out), hypervisor.CodeFailed, hypervisor.OpCopyOut, "a")
	requireCode(t, d.CopyIn(testCtx(t), "a", src, "/dirlink/planted"), hypervisor.CodeFailed, hypervisor.OpCopyIn, "a")
	assert.NoFileExists(t, filepath.Join(outside, "planted"))
	res = exec(t, d, "cat", "/link")
	assert.Equal(t, 1, res.ExitCode)
	assert.Empty(t, res.Stdout)
}

func TestRestoreGivesTheGuestAFreshDisk(t *testing.T) {
	t.Parallel()
	d := guestWith(t, map[string][]byte{"/malware.exe": []byte("bad")})
	assert.Equal(t, "malware.exe\n", string(exec(t, d, "ls").Stdout))
	_, err := d.Cleanup(testCtx(t), "a", hypervisor.CleanupRequest{Restore: true})
	require.NoError(t, err)
	require.NoError(t, d.Start(testCtx(t), "a"))
	waitFor(t, d, "a", hypervisor.PowerRunning, hypervisor.LockLocked)
	waitGuest(t, d, "a")
	assert.Empty(t, string(exec(t, d, "ls").Stdout))
	entries, err := os.ReadDir(filepath.Join(d.scratch, "a"))
	require.NoError(t, err)
	require.Len(t, entries, 1, "the old disk is gone from the host")
	assert.Equal(t, "disk-1", entries[0].Name())
}

func TestGuestRel(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"":                  ".",
		"/":                 ".",
		`C:\`:               ".",
		"a/b":               "a/b",
		"/a/./b/":           "a/b",
		"../../etc/passwd":  "etc/passwd",
		`C:\Users\x\..\y`:   "Users/y",
		`d:/temp/file.txt`:  "temp/file.txt",
		`\\server\share\f`:  "server/share/f",
		"/a/../../../../..": ".",
	} {
		assert.Equal(t, want, guestRel(in), in)
	}
}

func TestScanWritesItsLogForCollection(t *testing.T) {
	t.Parallel()
	d := guestWith(t, map[string][]byte{`C:\sandbox\eicar.com`: append([]byte("x"), eicar...)})
	res := exec(t, d, `C:\Tools\scan.exe`, "-o", `C:\logs\scan.log`, `C:\sandbox\eicar.com`)
	assert.Equal(t, 1, res.ExitCode)
	out := filepath.Join(t.TempDir(), "scan.log")
	require.NoError(t, d.CopyOut(testCtx(t), "a", "/logs/scan.log", out))
	got, err := os.ReadFile(out)
	require.NoError(t, err)
	assert.Equal(t, "C:\\sandbox\\eicar.com: infected\n", string(got))
}

func TestCopyFaultsFailTheFirstCopies(t *testing.T) {
	t.Parallel()
	d := newFake(t, `
[vms.a]
state = "running"
snapshots = ["clean"]
[vms.a.faults]
copy_in_failures = 1
copy_out_failures = 2
`)
	src := filepath.Join(t.TempDir(), "src")
	require.NoError(t, os.WriteFile(src, []byte("x"), 0o644))
	ctx := testCtx(t)
	requireCode(t, d.CopyIn(ctx, "a", src, "/f"), hypervisor.CodeFailed, hypervisor.OpCopyIn, "a")
	require.NoError(t, d.CopyIn(ctx, "a", src, "/f"), "only the first copy in fails")
	out := filepath.Join(t.TempDir(), "out")
	requireCode(t, d.CopyOut(ctx, "a", "/f", out), hypervisor.CodeFailed, hypervisor.OpCopyOut, "a")
	requireCode(t, d.CopyOut(ctx, "a", "/f", out), hypervisor.CodeFailed, hypervisor.OpCopyOut, "a")
	require.NoError(t, d.CopyOut(ctx, "a", "/f", out))
}
