package sdk_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A driver author's module depends on sandbox, which has no release tag,
// the ways docs/plugin-authoring.md says (§1): on a commit, through
// `go get github.com/sandboxhq/sandbox@COMMIT`, or on a checkout, through a
// replace directive; and a go.mod that copies the example's version without
// its replace fails with the error the page quotes. It runs the commands as
// written, offline: the repository is a git repository made here of this
// checkout's files, which git is told to fetch in place of GitHub's, and
// every other module comes from this machine's module cache.
func TestADriverModuleDependsOnACommitOrACheckout(t *testing.T) {
	if testing.Short() {
		t.Skip("copies the module and runs the go command a few times")
	}
	gitPath, err := exec.LookPath("git")
	if err != nil {
		t.Skip("needs git")
	}
	root, err := filepath.Abs("..")
	require.NoError(t, err)
	files, err := exec.Command(gitPath, "-C", root, "ls-files", "-z", "--cached", "--others", "--exclude-standard").Output()
	if err != nil {
		t.Skipf("needs the module as a git checkout: %v", err)
	}
	page, err := os.ReadFile(filepath.Join(root, "docs", "plugin-authoring.md"))
	require.NoError(t, err)
	goDirective := regexp.MustCompile(`(?m)^go \S+$`).Find(mustRead(t, filepath.Join(root, "go.mod")))
	require.NotNil(t, goDirective)
	modcache, err := exec.Command("go", "env", "GOMODCACHE").Output()
	require.NoError(t, err)
	// The module cache stands in for the module proxy below, and a
	// driver's go mod tidy needs every module of the build list, tests of
	// dependencies included; building this module fetched only those its
	// own packages import. A copy of go.mod takes the checksums that adds,
	// so that the checkout's go.sum stays as it is.
	modfile := filepath.Join(t.TempDir(), "go.mod")
	require.NoError(t, os.WriteFile(modfile, mustRead(t, filepath.Join(root, "go.mod")), 0o644))
	require.NoError(t, os.WriteFile(strings.TrimSuffix(modfile, ".mod")+".sum", mustRead(t, filepath.Join(root, "go.sum")), 0o644))
	download := exec.Command("go", "mod", "download", "-modfile="+modfile, "all")
	download.Dir = root
	if out, err := download.CombinedOutput(); err != nil {
		t.Fatalf("go mod download all (this test uses the module cache as a driver's module proxy): %v\n%s", err, out)
	}

	// The layout the page's commands assume: sandbox's checkout beside the
	// driver's module.
	dir := t.TempDir()
	upstream := filepath.Join(dir, "sandbox")
	for _, f := range strings.Split(strings.TrimRight(string(files), "\x00"), "\x00") {
		data, err := os.ReadFile(filepath.Join(root, f))
		if os.IsNotExist(err) {
			continue // deleted in the checkout, not yet in git
		}
		require.NoError(t, err)
		require.NoError(t, os.MkdirAll(filepath.Dir(filepath.Join(upstream, f)), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(upstream, f), data, 0o644))
	}
	gitConfig := filepath.Join(dir, "gitconfig")
	require.NoError(t, os.WriteFile(gitConfig, []byte(`[url "file://`+upstream+`"]
	insteadOf = https://github.com/sandboxhq/sandbox
[protocol "file"]
	allow = always
[user]
	name = sandbox test
	email = test@sandbox.invalid
[init]
	defaultBranch = main
`), 0o644))
	env := append(os.Environ(),
		"GIT_CONFIG_GLOBAL="+gitConfig, "GIT_CONFIG_NOSYSTEM=1",
		"GIT_AUTHOR_DATE=2026-01-02T03:04:05Z", "GIT_COMMITTER_DATE=2026-01-02T03:04:05Z",
		// Every module but sandbox from the modules this machine has.
		"GOPROXY=file://"+filepath.ToSlash(filepath.Join(strings.TrimSpace(string(modcache)), "cache", "download")),
		"GOPRIVATE=github.com/sandboxhq/sandbox", "GOSUMDB=off",
		"GOMODCACHE="+filepath.Join(dir, "modcache"), "GOFLAGS=-modcacherw", "GOTOOLCHAIN=local", "GOWORK=off")
	run := func(dir, name string, args ...string) (string, error) {
		cmd := exec.Command(name, args...)
		cmd.Dir, cmd.Env = dir, env
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		return out.String(), err
	}
	must := func(dir, name string, args ...string) string {
		t.Helper()
		out, err := run(dir, name, args...)
		require.NoError(t, err, "%s %s: %s", name, strings.Join(args, " "), out)
		return out
	}
	must(upstream, gitPath, "init", "-q")
	must(upstream, gitPath, "add", "-A")
	must(upstream, gitPath, "commit", "-q", "-m", "sandbox")
	commit := strings.TrimSpace(must(upstream, gitPath, "rev-parse", "HEAD"))

	// A driver's module: the example driver's code, with a go.mod of its own.
	driver := func(name, gomod string) string {
		d := filepath.Join(dir, name)
		require.NoError(t, os.MkdirAll(d, 0o755))
		srcs, err := filepath.Glob(filepath.Join(root, "docs", "example-driver", "*.go"))
		require.NoError(t, err)
		for _, src := range srcs {
			require.NoError(t, os.WriteFile(filepath.Join(d, filepath.Base(src)), mustRead(t, src), 0o644))
		}
		require.NoError(t, os.WriteFile(filepath.Join(d, "go.mod"),
			[]byte("module example.com/sandbox-procvm\n\n"+string(goDirective)+"\n"+gomod), 0o644))
		return d
	}
	documented := func(cmd string) {
		t.Helper()
		assert.Contains(t, string(page), cmd, "docs/plugin-authoring.md shows what this test runs")
	}

	t.Run("on a commit", func(t *testing.T) {
		d := driver("on-a-commit", "")
		documented("go get github.com/sandboxhq/sandbox@COMMIT\ngo mod tidy\n")
		must(d, "go", "get", "github.com/sandboxhq/sandbox@"+commit)
		must(d, "go", "mod", "tidy")
		pseudo := "v0.0.0-20260102030405-" + commit[:12]
		assert.Contains(t, string(mustRead(t, filepath.Join(d, "go.mod"))), "github.com/sandboxhq/sandbox "+pseudo+"\n")
		assert.Empty(t, must(d, "go", "list", "-e", "-deps", "-test", "-f", "{{with .Error}}{{.}}{{end}}", "./..."),
			"every package the driver and its tests import resolves")
	})

	t.Run("on the newest commit, while there is no tag", func(t *testing.T) {
		d := driver("latest", "")
		documented("`go get github.com/sandboxhq/sandbox@latest` takes the newest commit of the default branch")
		must(d, "go", "get", "github.com/sandboxhq/sandbox@latest")
		assert.Contains(t, string(mustRead(t, filepath.Join(d, "go.mod"))), "github.com/sandboxhq/sandbox v0.0.0-20260102030405-"+commit[:12])
	})

	t.Run("on a checkout", func(t *testing.T) {
		d := driver("on-a-checkout", "")
		documented("go mod edit -replace github.com/sandboxhq/sandbox=../sandbox\ngo mod tidy\n")
		must(d, "go", "mod", "edit", "-replace", "github.com/sandboxhq/sandbox=../sandbox")
		must(d, "go", "mod", "tidy")
		assert.Contains(t, string(mustRead(t, filepath.Join(d, "go.mod"))),
			"github.com/sandboxhq/sandbox v0.0.0-00010101000000-000000000000\n", "the version Go gives a replaced module")
		assert.Empty(t, must(d, "go", "list", "-e", "-deps", "-test", "-f", "{{with .Error}}{{.}}{{end}}", "./..."))
	})

	t.Run("on the example's version without its replace", func(t *testing.T) {
		d := driver("copied", "\nrequire github.com/sandboxhq/sandbox v0.0.0-00010101000000-000000000000\n")
		out, err := run(d, "go", "mod", "tidy")
		require.Error(t, err)
		const want = "go: github.com/sandboxhq/sandbox@v0.0.0-00010101000000-000000000000: invalid version: unknown revision 000000000000"
		documented(want)
		assert.Contains(t, out, strings.TrimPrefix(want, "go: "), "the page quotes the error as the go command gives it")
	})

	t.Run("on a version never tagged", func(t *testing.T) {
		d := driver("tagged", "")
		out, err := run(d, "go", "get", "github.com/sandboxhq/sandbox@v0.1.0")
		require.Error(t, err)
		want := "go: github.com/sandboxhq/sandbox@v0.1.0: invalid version: unknown revision v0.1.0"
		documented(want)
		assert.Contains(t, out, want)
	})
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	return data
}
