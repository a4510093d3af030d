//go:build unix

package main_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/api/apitest"
	"github.com/sandboxhq/sandbox/core/queue/pgtest"
)

const apiToken = "serve-test-token-0123456789"

// serveConfig is one host's configuration: its fake VMs (kept in the
// directory, so that a restarted service finds them as left), fast
// deadlines, and the profile "scan" over every host's VMs, an analysis of
// analysis seconds.
func serveConfig(host string, vms []string, all []string, analysis string, extra string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "state_dir = \"state\"\n[queue]\nhost = %q\ndead_after = \"3s\"\n", host)
	fmt.Fprintf(&b, "[lifecycle]\nsnapshot = \"clean\"\ncleanup_timeout = \"10s\"\nrestore_timeout = \"5s\"\nstart_timeout = \"5s\"\n"+
		"acpi_timeout = \"2s\"\npoweroff_timeout = \"2s\"\nemergency_timeout = \"2s\"\nrelease_timeout = \"2s\"\nunlock_timeout = \"2s\"\n")
	fmt.Fprintf(&b, "[plugins.fake]\npath = %q\n[plugins.fake.config]\nstate_dir = \"world\"\njournal = \"journal.jsonl\"\n", fakeBin)
	b.WriteString("[plugins.fake.config.timing]\nstart = \"50ms\"\nguest_ready = \"50ms\"\nrestore = \"50ms\"\npoweroff = \"50ms\"\nunlock_after_stop = \"50ms\"\n")
	for _, vm := range vms {
		fmt.Fprintf(&b, "[plugins.fake.config.vms.%s]\nsnapshots = [\"clean\"]\n", vm)
	}
	quoted := make([]string, len(all))
	for i, vm := range all {
		quoted[i] = fmt.Sprintf("%q", vm)
	}
	fmt.Fprintf(&b, "[profiles.scan]\nvms = [%s]\nsample_path = \"/s/{sha256}\"\ncommand = [\"sleep\", %q]\n"+
		"timeout = \"10s\"\nready_timeout = \"5s\"\ncopy_timeout = \"5s\"\n[profiles.scan.verdict]\nmalicious_exit_codes = [1]\n",
		strings.Join(quoted, ", "), analysis)
	b.WriteString(extra)
	return b.String()
}

// server is a running `sandbox serve`.
type server struct {
	t   testing.TB
	cmd *exec.Cmd
	url string
	// client checks every answer against docs/openapi.yaml.
	client *http.Client
	mu     sync.Mutex
	log    bytes.Buffer
	done   chan struct{}
}

var listening = regexp.MustCompile(`listening on (http://\S+)`)

// serveListens bounds the wait for a service to listen: a bound for one
// that never does, not a speed. Beside stress-ng, three services starting
// on one PostgreSQL spent 2 s on each River migration, and one had not
// listened after 30 s.
const serveListens = 2 * time.Minute

// startServe starts `sandbox serve` in dir and waits until it listens.
func startServe(t testing.TB, dir string, args ...string) *server {
	t.Helper()
	return startServeCmd(t, exec.Command(sandboxBin, append([]string{"--config", filepath.Join(dir, "config.toml"), "--log-level", "info",
		"serve", "--listen", "127.0.0.1:0"}, args...)...))
}

// startServeCmd starts a `sandbox serve` command line and waits until it
// listens.
func startServeCmd(t testing.TB, cmd *exec.Cmd) *server {
	t.Helper()
	cmd.Env = append(os.Environ(), "SANDBOX_API_TOKEN="+apiToken)
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	s := &server{t: t, cmd: cmd, done: make(chan struct{}), client: apitest.Client(t)}
	t.Cleanup(func() { s.kill() })
	urls := make(chan string, 1)
	go func() {
		defer close(s.done)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			s.mu.Lock()
			s.log.WriteString(sc.Text() + "\n")
			s.mu.Unlock()
			if m := listening.FindStringSubmatch(sc.Text()); m != nil {
				urls <- m[1]
			}
		}
	}()
	select {
	case s.url = <-urls:
	case <-s.done:
		t.Fatalf("sandbox serve ended before it listened:\n%s", s.logs())
	case <-time.After(serveListens):
		t.Fatalf("sandbox serve did not listen within %s:\n%s", serveListens, s.logs())
	}
	return s
}

func (s *server) logs() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.log.String()
}

// kill ends the service at once, as a crash or SIGKILL would.
func (s *server) kill() {
	if s.cmd.ProcessState == nil {
		_ = s.cmd.Process.Kill()
		<-s.done
		_ = s.cmd.Wait()
	}
}

// stop sends sig and waits for the service to end.
func (s *server) stop(sig syscall.Signal, within time.Duration) int {
	s.t.Helper()
	require.NoError(s.t, s.cmd.Process.Signal(sig))
	ended := make(chan struct{})
	go func() {
		<-s.done
		_ = s.cmd.Wait()
		close(ended)
	}()
	select {
	case <-ended:
	case <-time.After(within):
		s.t.Fatalf("sandbox serve did not stop within %s of %s:\n%s", within, sig, s.logs())
	}
	return s.cmd.ProcessState.ExitCode()
}

// api calls the service with the token and decodes its JSON answer.
func (s *server) api(method, path string, body io.Reader, contentType string, out any) int {
	s.t.Helper()
	req, err := http.NewRequest(method, s.url+path, body)
	require.NoError(s.t, err)
	req.Header.Set("Authorization", "Bearer "+apiToken)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := s.client.Do(req)
	require.NoError(s.t, err)
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if out != nil {
		require.NoError(s.t, json.Unmarshal(data, out), string(data))
	}
	return resp.StatusCode
}

func (s *server) submit(name, content string) string {
	s.t.Helper()
	var b bytes.Buffer
	w := multipart.NewWriter(&b)
	fw, err := w.CreateFormFile("file", name)
	require.NoError(s.t, err)
	_, _ = fw.Write([]byte(content))
	require.NoError(s.t, w.Close())
	var out struct{ ID string }
	require.Equal(s.t, http.StatusAccepted, s.api("POST", "/v1/tasks", &b, w.FormDataContentType(), &out))
	return out.ID
}

type serveTask struct {
	ID      string
	Sample  struct{ SHA256 string }
	State   string
	Verdict string
	Results []struct {
		Host, Profile, State, VM string
	}
	Analyses []struct {
		Profile, State, Host, Step string
		Attempt                    int
		Lost                       []struct{ Host, Why string } `json:"lost_attempts"`
	}
	Report *struct{ Verdict string }
}

// Final reports whether the task has ended.
func (t serveTask) Final() bool {
	return t.State == "done" || t.State == "failed" || t.State == "cancelled"
}

func (s *server) task(id string) serveTask {
	s.t.Helper()
	var t serveTask
	require.Equal(s.t, http.StatusOK, s.api("GET", "/v1/tasks/"+id, nil, "", &t))
	return t
}

// waitFor polls until cond holds.
func waitFor(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		require.True(t, time.Now().Before(deadline), "%s: not within %s", what, within)
		time.Sleep(100 * time.Millisecond) // polling the service as a client would
	}
}

func (s *server) running() int {
	var list struct{ Tasks []struct{ ID string } }
	s.api("GET", "/v1/tasks?state=running", nil, "", &list)
	return len(list.Tasks)
}

// vmsClean asserts through the fake's world, with the service stopped, that
// every VM is off, unlocked and on its clean snapshot.
func vmsClean(t *testing.T, dir string, vms ...string) {
	t.Helper()
	for _, vm := range vms {
		r := sandboxRaw(t, dir, "--json", "vm", "status", vm)
		require.Equal(t, 0, r.code, r.stderr)
		var st map[string]any
		require.NoError(t, json.Unmarshal([]byte(r.stdout), &st))
		assert.Equal(t, "off", st["power"], vm)
		assert.Equal(t, "unlocked", st["lock"], vm)
		assert.Equal(t, "clean", st["current_snapshot"], vm)
	}
}

func TestServeFinishesEveryTaskAcrossASIGKILL(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	conf := serveConfig("solo", []string{"vm1", "vm2"}, []string{"vm1", "vm2"}, "1.5", "")
	require.NoError(t, os.WriteFile(filepath.Join(dir, "config.toml"), []byte(conf), 0o644))
	s := startServe(t, dir)
	var ids []string
	for i := range 5 {
		ids = append(ids, s.submit(fmt.Sprintf("s%d.txt", i), fmt.Sprintf("sample %d", i)))
	}
	waitFor(t, 30*time.Second, "two tasks running", func() bool { return s.running() == 2 })
	s.kill()

	s = startServe(t, dir)
	assert.Contains(t, s.logs(), "took over an analysis of a host that stopped")
	assert.Contains(t, s.logs(), `why="the host was restarted"`)
	waitFor(t, time.Minute, "every task ended", func() bool {
		for _, id := range ids {
			if st := s.task(id).State; st != "done" {
				return false
			}
		}
		return true
	})
	lost := 0
	for _, id := range ids {
		task := s.task(id)
		require.Len(t, task.Results, 1, "one result per profile, exactly")
		require.NotNil(t, task.Report)
		assert.Equal(t, "clean", task.Report.Verdict)
		lost += len(task.Analyses[0].Lost)
	}
	assert.Equal(t, 2, lost, "the two analyses running when the host died say they lost an attempt")
	assert.Equal(t, 0, s.stop(syscall.SIGTERM, time.Minute))
	vmsClean(t, dir, "vm1", "vm2")
}

// A host killed in the middle of a task leaves its VM running and locked.
// When it starts again with no work for that VM,
// it cleans the VM all the same, rather than leaving it dirty until a
// task happens to come to it. (Its queue is removed: the task it was
// running is not there to come back.)
func TestServeCleansAVMAKilledHostLeftEvenWithNoWorkForIt(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	conf := serveConfig("solo", []string{"vm1"}, []string{"vm1"}, "30", "")
	require.NoError(t, os.WriteFile(filepath.Join(dir, "config.toml"), []byte(conf), 0o644))
	s := startServe(t, dir)
	s.submit("a.txt", "a")
	waitFor(t, 30*time.Second, "the analysis under way", func() bool { return strings.Contains(s.logs(), "engine: analyzing") })
	s.kill()

	queueFiles, err := filepath.Glob(filepath.Join(dir, "state", "queue.db*"))
	require.NoError(t, err)
	require.NotEmpty(t, queueFiles)
	for _, f := range queueFiles {
		require.NoError(t, os.Remove(f))
	}
	s = startServe(t, dir)
	waitFor(t, time.Minute, "the VM cleaned", func() bool {
		return strings.Contains(s.logs(), "cleaned a VM an earlier process left behind")
	})
	assert.Equal(t, 0, s.stop(syscall.SIGTERM, time.Minute))
	vmsClean(t, dir, "vm1")
}

func TestServeStopsOnSIGTERMCleaningItsVMs(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	conf := serveConfig("solo", []string{"vm1"}, []string{"vm1"}, "30", "")
	require.NoError(t, os.WriteFile(filepath.Join(dir, "config.toml"), []byte(conf), 0o644))
	s := startServe(t, dir)
	id := s.submit("a.txt", "a")
	waitFor(t, 30*time.Second, "the task running", func() bool { return s.running() == 1 })
	waitFor(t, 30*time.Second, "the analysis under way", func() bool { return strings.Contains(s.logs(), "engine: analyzing") })
	begun := time.Now()
	assert.Equal(t, 0, s.stop(syscall.SIGTERM, time.Minute))
	assert.Less(t, time.Since(begun), 20*time.Second, "the 30 s analysis was interrupted")
	assert.Contains(t, s.logs(), "cleaning the VMs in use")
	vmsClean(t, dir, "vm1")

	// The task went back to the queue: the next start runs it again.
	s = startServe(t, dir)
	assert.Equal(t, "running", s.task(id).State, "the task is still accepted, not failed")
	assert.Equal(t, 0, s.stop(syscall.SIGTERM, time.Minute))
}

func TestTwoHostsShareAPostgreSQLQueueAndSurviveOneDying(t *testing.T) {
	t.Parallel()
	db := pgtest.Database(t)
	all := []string{"a1", "a2", "b1", "b2"}
	dirA, dirB := t.TempDir(), t.TempDir()
	confA := serveConfig("host-a", []string{"a1", "a2"}, all, "2", "")
	confB := serveConfig("host-b", []string{"b1", "b2"}, all, "2", "")
	require.NoError(t, os.WriteFile(filepath.Join(dirA, "config.toml"), []byte(confA), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dirB, "config.toml"), []byte(confB), 0o644))
	a := startServe(t, dirA, "--database", db)
	b := startServe(t, dirB, "--database", db)
	var ids []string
	for i := range 8 {
		ids = append(ids, a.submit(fmt.Sprintf("s%d.txt", i), fmt.Sprintf("sample %d", i)))
	}
	waitFor(t, 30*time.Second, "both hosts analysing", func() bool {
		return strings.Contains(a.logs(), "engine: analyzing") && strings.Contains(b.logs(), "engine: analyzing")
	})
	a.kill() // host A dies with its tasks under way

	waitFor(t, 3*time.Minute, "every task ended on host B", func() bool {
		for _, id := range ids {
			if b.task(id).State != "done" {
				return false
			}
		}
		return true
	})
	hosts := map[string]int{}
	for _, id := range ids {
		task := b.task(id)
		require.Len(t, task.Results, 1)
		hosts[task.Results[0].Host]++
	}
	assert.Greater(t, hosts["host-b"], 4, "host B ran its share and took over host A's: %v", hosts)
	assert.Equal(t, 0, b.stop(syscall.SIGTERM, time.Minute))
}

func TestServeMistakes(t *testing.T) {
	t.Parallel()
	conf := serveConfig("solo", []string{"vm1"}, []string{"vm1"}, "1", "")
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer busy.Close()
	for _, c := range []struct {
		name   string
		config string
		token  string
		args   []string
		code   int
		msg    string
	}{
		{"no token", conf, "", nil, 1, "no API token: set [server] token in config.toml or SANDBOX_API_TOKEN"},
		{"a short token in the file", conf + "[server]\ntoken = \"abc\"\n", "", nil, 1, "server.token: too short"},
		{"not a PostgreSQL URL", conf, apiToken, []string{"--database", "mysql://x"}, 2, "--database: want a postgres:// URL"},
		{"PostgreSQL not there", conf, apiToken, []string{"--database", "postgres://u:pw-zq81@127.0.0.1:1/db"}, 1, "is PostgreSQL running"},
		{"a password in the query", conf, apiToken, []string{"--database", "postgres://u@127.0.0.1:1/db?sslmode=disable&password=pw-zq81"}, 1, "is PostgreSQL running"},
		{"a password with a slash and an at sign", conf, apiToken, []string{"--database", "postgres://u:pw-zq81/x@y@127.0.0.1:1/db"}, 1, "database"},
		{"a password escaped", conf, apiToken, []string{"--database", "postgres://u:pw-zq81%2Fx%40y@127.0.0.1:1/db"}, 1, "is PostgreSQL running"},
		{"a password in the file's URL", strings.Replace(conf, "[queue]\n", "[queue]\ndatabase = \"postgres://u:pw-zq81@127.0.0.1:1/db?password=pw-zq81\"\n", 1),
			apiToken, nil, 1, "is PostgreSQL running"},
		{"the port taken", conf, apiToken, []string{"--listen", busy.Addr().String()}, 1, "listen on " + busy.Addr().String()},
		{"no profile", fmt.Sprintf("state_dir = \"state\"\n[plugins.fake]\npath = %q\n", fakeBin), apiToken, nil, 1, "has no [profiles.NAME] table"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			require.NoError(t, os.WriteFile(filepath.Join(dir, "config.toml"), []byte(c.config), 0o644))
			cmd := exec.Command(sandboxBin, append([]string{"--config", filepath.Join(dir, "config.toml"), "serve"}, c.args...)...)
			cmd.Env = append(os.Environ(), "SANDBOX_API_TOKEN="+c.token)
			out, err := cmd.CombinedOutput()
			require.Error(t, err, string(out))
			assert.Equal(t, c.code, cmd.ProcessState.ExitCode(), string(out))
			assert.Contains(t, string(out), c.msg)
			assert.NotContains(t, string(out), "pw-zq81", "a database password is never printed")
		})
	}
}
