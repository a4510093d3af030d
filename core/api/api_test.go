package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/api"
	"github.com/sandboxhq/sandbox/core/api/apitest"
	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/engine"
	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/core/lifecycle"
	"github.com/sandboxhq/sandbox/core/queue"
	"github.com/sandboxhq/sandbox/core/queue/pgtest"
	"github.com/sandboxhq/sandbox/core/statedir"
	"github.com/sandboxhq/sandbox/plugins/fake"
	"github.com/sandboxhq/sandbox/sdk"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

const token = "test-token-0123456789"

// service is one test's `sandbox serve`: the fake hypervisor through the
// SDK's adapters, the queue on an SQLite file, the API on a test server
// with the configured limits. Every answer it gives through client is
// checked against docs/openapi.yaml.
type service struct {
	t      *testing.T
	url    string
	client *http.Client
	driver *sdk.InProcess
	queue  *queue.Queue
	events *engine.Events
	qr     lifecycle.Quarantine
	state  *statedir.Dir
	dir    string
	srv    *api.Server
}

// serviceOptions shape a test's service.
type serviceOptions struct {
	// slow adds the profile slow: a 60 s analysis on the Linux VM.
	slow bool
	// server changes the [server] settings of the test.
	server func(*config.Server)
	// stateDir keeps leases and the quarantine in a state directory, as
	// sandbox serve does, instead of in memory.
	stateDir bool
	// world replaces the fake's world.
	world string
	// artifactLimit is the queue's: the largest artifact kept in the
	// database.
	artifactLimit int64
	// database is a PostgreSQL URL for the queue, instead of SQLite.
	database string
	// vms and profiles replace the VMs win and linux and their profiles
	// (world must then declare the VMs).
	vms      []string
	profiles []config.Profile
}

// withPostgres puts the queue in a PostgreSQL database of the test's own.
func withPostgres(t testing.TB) func(*serviceOptions) {
	db := pgtest.Database(t)
	return func(o *serviceOptions) { o.database = db }
}

const fakeWorld = `[plugins.fake.config]
[plugins.fake.config.timing]
start = "20ms"
acpi_shutdown = "30ms"
poweroff = "20ms"
restore = "20ms"
unlock_after_stop = "20ms"
guest_ready = "30ms"
[plugins.fake.config.vms.win]
state = "running"
snapshots = ["clean"]
[plugins.fake.config.vms.linux]
snapshots = ["clean"]
`

func profiles(slow bool) []config.Profile {
	defender := config.NewProfile("defender", []string{"win"}, `C:\s\{name}`, "scan", "{sample}")
	clamav := config.NewProfile("clamav", []string{"linux"}, "/s/{sha256}", "scan", "-o", "/s/log", "{sample}")
	clamav.Artifacts = []string{"/s/log"}
	out := []config.Profile{defender, clamav}
	if slow {
		out = append(out, config.NewProfile("slow", []string{"linux"}, "/s/{sha256}", "sleep", "60"))
	}
	return out
}

// newService starts a service with the profiles defender and clamav.
func newService(t *testing.T, opts ...func(*serviceOptions)) *service {
	t.Helper()
	s := newServiceTB(t, opts...)
	s.t = t
	return s
}

func withSlow(o *serviceOptions) { o.slow = true }

func withStateDir(o *serviceOptions) { o.stateDir = true }

func withServer(f func(*config.Server)) func(*serviceOptions) {
	return func(o *serviceOptions) { o.server = f }
}

// newServiceTB is newService for benchmarks too.
func newServiceTB(t testing.TB, opts ...func(*serviceOptions)) *service {
	t.Helper()
	var o serviceOptions
	for _, f := range opts {
		f(&o)
	}
	if o.world == "" {
		o.world = fakeWorld
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := sdk.ServeInProcess(ctx, fake.New, sdk.ConfigFromTOML("fake", filepath.Join(dir, "config.toml"), []byte(o.world)), nil)
	require.NoError(t, err)
	t.Cleanup(func() { d.Close() })
	var (
		qr     lifecycle.Quarantine = lifecycle.NewMemoryQuarantine()
		state  *statedir.Dir
		leases lifecycle.Leases
	)
	if o.stateDir {
		state, err = statedir.Open(filepath.Join(dir, "state"))
		require.NoError(t, err)
		qr, leases = state.Quarantine(), state.Leases()
	}
	m := lifecycle.New(lifecycle.Options{Quarantine: qr, Leases: leases})
	settings := config.DefaultLifecycle()
	settings.Snapshot = "clean"
	if o.vms == nil {
		o.vms, o.profiles = []string{"win", "linux"}, profiles(o.slow)
	}
	vms := map[string]lifecycle.VM{}
	for _, n := range o.vms {
		vms[n] = lifecycle.VM{Name: n, Plugin: "fake", Driver: d, Settings: settings}
	}
	metrics := api.NewMetrics()
	logs := &plugintest.Buffer{}
	logger := hclog.New(&hclog.LoggerOptions{Level: hclog.Debug, Output: logs})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the service's log:\n%s", logs.String())
		}
	})
	events := engine.NewEvents()
	e := engine.New(engine.Options{Lifecycle: m, Events: events, Logger: logger})
	pool, err := engine.NewPool(ctx, e, slices.Collect(maps.Values(vms)), o.profiles)
	require.NoError(t, err)
	q, err := queue.Open(ctx, queue.Options{Database: o.database, StateDir: dir, Host: "test-host", Lifecycle: m, Pool: pool,
		OutDir: filepath.Join(dir, "results"), OnResult: metrics.Result, Logger: logger, ArtifactLimit: o.artifactLimit})
	require.NoError(t, err)
	cfg := config.Server{Token: token, MaxSampleSize: 1 << 20}
	if o.server != nil {
		o.server(&cfg)
	}
	srv, err := api.New(api.Options{Queue: q, Lifecycle: m, State: state, Server: cfg, Events: events, Metrics: metrics, Logger: logger},
		func() bool { return true })
	require.NoError(t, err)
	t.Cleanup(srv.Close)
	hs := httptest.NewUnstartedServer(srv.Handler())
	hs.Config = srv.HTTPServer()
	hs.Listener = srv.Listener(hs.Listener)
	hs.Start()
	require.NoError(t, q.Start(ctx))
	t.Cleanup(func() {
		hs.Close()
		sctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		assert.NoError(t, q.Stop(sctx))
		q.Close()
	})
	client := &http.Client{Transport: apitest.Transport(t, http.DefaultTransport), Timeout: time.Minute}
	return &service{url: hs.URL, client: client, driver: d, queue: q, events: events, qr: qr, state: state, dir: dir, srv: srv}
}

// call makes an API request and decodes the JSON answer into out.
func (s *service) call(method, path, tok string, body io.Reader, contentType string, out any) int {
	s.t.Helper()
	req, err := http.NewRequest(method, s.url+path, body)
	require.NoError(s.t, err)
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := s.client.Do(req)
	require.NoError(s.t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(s.t, err)
	if out != nil {
		require.NoError(s.t, json.Unmarshal(data, out), string(data))
	}
	return resp.StatusCode
}

// page GETs a page with the token (or none) and returns its HTML,
// failing the test unless it answers 200.
func (s *service) page(path, tok string) string {
	s.t.Helper()
	req, err := http.NewRequest("GET", s.url+path, nil)
	require.NoError(s.t, err)
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := s.client.Do(req)
	require.NoError(s.t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(s.t, err)
	require.Equal(s.t, http.StatusOK, resp.StatusCode, "%s", data)
	return string(data)
}

// form builds a multipart submission: the fields, then the file.
func form(t testing.TB, name string, data []byte, fields ...string) (io.Reader, string) {
	t.Helper()
	var b bytes.Buffer
	w := multipart.NewWriter(&b)
	for i := 0; i+1 < len(fields); i += 2 {
		require.NoError(t, w.WriteField(fields[i], fields[i+1]))
	}
	if name != "" {
		fw, err := w.CreateFormFile("file", name)
		require.NoError(t, err)
		_, err = fw.Write(data)
		require.NoError(t, err)
	}
	require.NoError(t, w.Close())
	return &b, w.FormDataContentType()
}

// fileFirst builds a submission with the file before a field.
func fileFirst(t testing.TB, field, value string) (io.Reader, string) {
	t.Helper()
	var b bytes.Buffer
	w := multipart.NewWriter(&b)
	fw, err := w.CreateFormFile("file", "a.txt")
	require.NoError(t, err)
	_, err = fw.Write([]byte("a"))
	require.NoError(t, err)
	require.NoError(t, w.WriteField(field, value))
	require.NoError(t, w.Close())
	return &b, w.FormDataContentType()
}

type taskJSON struct {
	ID      string `json:"id"`
	State   string `json:"state"`
	Verdict string `json:"verdict"`
	Sample  struct {
		Name   string `json:"name"`
		SHA256 string `json:"sha256"`
		Size   int64  `json:"size"`
	} `json:"sample"`
	Profiles []string `json:"profiles"`
	Results  []struct {
		Host       string `json:"host"`
		Profile    string `json:"profile"`
		State      string `json:"state"`
		Verdict    string `json:"verdict"`
		VM         string `json:"vm"`
		FailedStep string `json:"failed_step"`
		Error      string `json:"error"`
	} `json:"results"`
	Report *engine.Report `json:"report"`
}

type errorJSON struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func (s *service) submit(name string, data []byte, fields ...string) taskJSON {
	s.t.Helper()
	body, ct := form(s.t, name, data, fields...)
	var out taskJSON
	require.Equal(s.t, http.StatusAccepted, s.call("POST", "/v1/tasks", token, body, ct, &out))
	require.NotEmpty(s.t, out.ID)
	return out
}

// wait polls a task until it has ended.
func (s *service) wait(id string) taskJSON {
	s.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var t taskJSON
		require.Equal(s.t, http.StatusOK, s.call("GET", "/v1/tasks/"+id, token, nil, "", &t))
		if t.State == "done" || t.State == "failed" || t.State == "cancelled" {
			return t
		}
		require.True(s.t, time.Now().Before(deadline), "task %s still %s", id, t.State)
		time.Sleep(50 * time.Millisecond) // polling the API as a client would
	}
}

func eicar() []byte {
	return []byte(`X5O!P%@AP[4\PZX54(P^)7CC)7}$` + `EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*`)
}

func TestSubmitPollAndFetchTheReports(t *testing.T) {
	s := newService(t)
	clean := s.submit("notes.txt", []byte("harmless\n"))
	bad := s.submit("eicar.com", eicar(), "profile", "clamav,defender", "priority", "1")
	assert.Equal(t, "queued", clean.State)
	assert.Equal(t, []string{"clamav", "defender"}, clean.Profiles, "every profile by default")
	assert.Len(t, bad.Sample.SHA256, 64)
	assert.Equal(t, int64(68), bad.Sample.Size)

	for _, c := range []struct {
		task taskJSON
		want engine.Verdict
	}{{clean, engine.VerdictClean}, {bad, engine.VerdictMalicious}} {
		got := s.wait(c.task.ID)
		assert.Equal(t, "done", got.State)
		assert.Equal(t, string(c.want), got.Verdict)
		require.Len(t, got.Results, 2)
		for _, r := range got.Results {
			assert.Equal(t, "test-host", r.Host)
			assert.Equal(t, string(c.want), r.Verdict, r.Profile)
		}
		require.NotNil(t, got.Report)
		assert.Equal(t, engine.ReportSchema, got.Report.Schema)
		assert.Equal(t, c.want, got.Report.Verdict)
		assert.Equal(t, c.task.Sample.SHA256, got.Report.Sample.SHA256)
	}
	var list struct {
		Tasks []struct{ ID, State string }
	}
	require.Equal(t, http.StatusOK, s.call("GET", "/v1/tasks?state=done", token, nil, "", &list))
	assert.Len(t, list.Tasks, 2)

	// Every VM ends off, unlocked and restored.
	for _, vm := range []string{"win", "linux"} {
		st, err := s.driver.Status(context.Background(), vm)
		require.NoError(t, err)
		assert.True(t, st.Power.IsOff(), vm)
		assert.Equal(t, hypervisor.LockUnlocked, st.Lock, vm)
		assert.Equal(t, "clean", st.CurrentSnapshot, vm)
	}
}

func TestBadRequestsAreRefusedAndQueueNothing(t *testing.T) {
	s := newService(t)
	big := bytes.Repeat([]byte("x"), 1<<20+1)
	for _, c := range []struct {
		name   string
		tok    string
		body   func() (io.Reader, string)
		status int
		code   string
	}{
		{"no token", "", func() (io.Reader, string) { return form(t, "a", []byte("a")) }, 401, "unauthorized"},
		{"a wrong token", "nope", func() (io.Reader, string) { return form(t, "a", []byte("a")) }, 401, "unauthorized"},
		{"an oversized upload", token, func() (io.Reader, string) { return form(t, "big", big) }, 413, "too_large"},
		{"an unknown profile", token, func() (io.Reader, string) { return form(t, "a", []byte("a"), "profile", "clamav,avast") }, 400, "unknown_profile"},
		{"a VM outside the profile", token, func() (io.Reader, string) { return form(t, "a", []byte("a"), "profile", "clamav", "vm", "win") }, 400, "unknown_vm"},
		{"a bad priority", token, func() (io.Reader, string) { return form(t, "a", []byte("a"), "priority", "9") }, 400, "bad_priority"},
		{"priority 0", token, func() (io.Reader, string) { return form(t, "a", []byte("a"), "priority", "0") }, 400, "bad_priority"},
		{"an empty profile list", token, func() (io.Reader, string) { return form(t, "a", []byte("a"), "profile", ",") }, 400, "unknown_profile"},
		{"an empty profile name in a list", token, func() (io.Reader, string) { return form(t, "a", []byte("a"), "profile", "clamav,") }, 400, "unknown_profile"},
		{"no file", token, func() (io.Reader, string) { return form(t, "", nil, "profile", "clamav") }, 400, "bad_request"},
		{"an empty file", token, func() (io.Reader, string) { return form(t, "a", nil) }, 400, "empty_sample"},
		{"a field after the file", token, func() (io.Reader, string) { return fileFirst(t, "profile", "clamav") }, 400, "bad_request"},
		{"two files", token, func() (io.Reader, string) { return fileFirst(t, "file", "b") }, 400, "bad_request"},
		{"malformed multipart", token, func() (io.Reader, string) {
			return strings.NewReader("--x\r\nnot a part"), "multipart/form-data; boundary=x"
		}, 400, "bad_request"},
		{"JSON instead of a form", token, func() (io.Reader, string) { return strings.NewReader(`{"file": "x"}`), "application/json" }, 415, "bad_request"},
	} {
		t.Run(c.name, func(t *testing.T) {
			body, ct := c.body()
			var e errorJSON
			assert.Equal(t, c.status, s.call("POST", "/v1/tasks", c.tok, body, ct, &e))
			assert.Equal(t, c.code, e.Error.Code, e.Error.Message)
			assert.NotEmpty(t, e.Error.Message)
		})
	}
	counts, err := s.queue.Counts(context.Background())
	require.NoError(t, err)
	assert.Empty(t, counts, "nothing was queued")

	var e errorJSON
	assert.Equal(t, 404, s.call("GET", "/v1/tasks/nope", token, nil, "", &e))
	assert.Equal(t, "not_found", e.Error.Code)
	assert.Equal(t, 404, s.call("GET", "/v1/nothing", token, nil, "", &e))
	assert.Equal(t, 400, s.call("GET", "/v1/tasks?limit=x", token, nil, "", &e))
	assert.Equal(t, 401, s.call("GET", "/v1/vms", "", nil, "", &e), "every /v1 call needs the token")
}

func TestCancelATask(t *testing.T) {
	s := newService(t, withSlow)
	// The slow task holds the Linux VM; the second waits for it, and is
	// cancelled before it runs; then the slow one is cancelled mid-analysis.
	slow := s.submit("a.txt", []byte("a"), "profile", "slow")
	s.waitStep("linux", engine.StepAnalyzing)
	queued := s.submit("b.txt", []byte("b"), "vm", "linux", "profile", "clamav")
	var got taskJSON
	require.Equal(t, http.StatusOK, s.call("POST", "/v1/tasks/"+queued.ID+"/cancel", token, nil, "", &got))
	t.Logf("cancel answered %s with %d results", got.State, len(got.Results))
	got = s.wait(queued.ID)
	assert.Equal(t, "cancelled", got.State)
	require.Len(t, got.Results, 1)
	assert.Equal(t, "", got.Results[0].VM, "it never got a VM")

	begun := time.Now()
	require.Equal(t, http.StatusOK, s.call("POST", "/v1/tasks/"+slow.ID+"/cancel", token, nil, "", &got))
	got = s.wait(slow.ID)
	assert.Less(t, time.Since(begun), 30*time.Second, "the 60 s analysis was interrupted")
	assert.Equal(t, "cancelled", got.State)
	require.Len(t, got.Results, 1)
	assert.Equal(t, "linux", got.Results[0].VM)
	st, err := s.driver.Status(context.Background(), "linux")
	require.NoError(t, err)
	assert.True(t, st.Power.IsOff(), "the VM was cleaned")
	assert.Equal(t, hypervisor.LockUnlocked, st.Lock)

	var e errorJSON
	assert.Equal(t, http.StatusConflict, s.call("POST", "/v1/tasks/"+slow.ID+"/cancel", token, nil, "", &e))
	assert.Equal(t, "already_finished", e.Error.Code)
}

// waitStep waits until the VM's task is in step.
func (s *service) waitStep(vm string, step engine.Step) {
	s.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if e, ok := s.events.Latest()[vm]; ok && e.Step == step {
			return
		}
		require.True(s.t, time.Now().Before(deadline), "%s never reached %s", vm, step)
		time.Sleep(20 * time.Millisecond) // polling the queue's view as the page does
	}
}

func TestVMsMetricsAndHealth(t *testing.T) {
	s := newService(t)
	s.wait(s.submit("eicar.com", eicar()).ID)
	var vms struct {
		Host string
		VMs  []struct {
			Name     string
			Profiles []string
			Status   *hypervisor.Status
			Step     *engine.Event
		}
	}
	require.Equal(t, http.StatusOK, s.call("GET", "/v1/vms", token, nil, "", &vms))
	assert.Equal(t, "test-host", vms.Host)
	require.Len(t, vms.VMs, 2)
	for _, vm := range vms.VMs {
		require.NotNil(t, vm.Status, vm.Name)
		assert.Equal(t, hypervisor.PowerOff, vm.Status.Power)
		require.NotNil(t, vm.Step)
		assert.Equal(t, engine.StepDone, vm.Step.Step)
	}

	resp, err := s.client.Get(s.url + "/metrics")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`sandbox_tasks{state="done"} 1`,
		`sandbox_analyses_total{state="done",verdict="malicious"} 2`,
		`sandbox_cleanups_total{outcome="ok"} 2`,
		`sandbox_queue_depth{profile="clamav"} 0`,
		`sandbox_step_duration_seconds_count{profile="defender",step="analyzing"} 1`,
		`sandbox_vm_step{step="idle",vm="win"} 1`,
		`sandbox_vms_quarantined 0`,
	} {
		assert.Contains(t, string(body), want)
	}

	for path, want := range map[string]string{"/healthz": "ok", "/readyz": "ready"} {
		resp, err := s.client.Get(s.url + path)
		require.NoError(t, err)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		assert.Equal(t, 200, resp.StatusCode, path)
		assert.Contains(t, string(b), want)
	}

	page := s.page("/", token)
	assert.Contains(t, page, `<tr data-vm="win">`)
	assert.Contains(t, page, "eicar.com")
	assert.Contains(t, page, `class="malicious"`)
}

func TestCleaningAVMThroughTheAPIPutsItBackInService(t *testing.T) {
	s := newService(t)
	require.NoError(t, s.qr.Mark(context.Background(), "fake/linux", "an operator saw it misbehave"))
	var rep lifecycle.OpReport
	require.Equal(t, http.StatusOK, s.call("POST", "/v1/vms/linux/cleanup", token, nil, "", &rep))
	assert.Empty(t, rep.Error)
	_, quarantined, err := s.qr.Get(context.Background(), "fake/linux")
	require.NoError(t, err)
	assert.False(t, quarantined)
	// The Windows VM was left running, and the service's start reconciles
	// it in the background: a first call waits for that (it holds the VM)
	// whichever of them cleans it. Left running again, reconciling cleans
	// it and says so; once clean, reconciling changes nothing.
	require.Equal(t, http.StatusOK, s.call("POST", "/v1/vms/win/reconcile", token, nil, "", &rep))
	require.NoError(t, s.driver.Start(context.Background(), "win"))
	rep = lifecycle.OpReport{}
	require.Equal(t, http.StatusOK, s.call("POST", "/v1/vms/win/reconcile", token, nil, "", &rep))
	assert.True(t, rep.Reconciled, "a VM left running is reconciled")
	st, err := s.driver.Status(context.Background(), "win")
	require.NoError(t, err)
	assert.True(t, st.Power.IsOff())
	rep = lifecycle.OpReport{}
	require.Equal(t, http.StatusOK, s.call("POST", "/v1/vms/win/reconcile", token, nil, "", &rep))
	assert.False(t, rep.Reconciled, "a clean VM is left alone")

	var e errorJSON
	assert.Equal(t, 404, s.call("POST", "/v1/vms/ghost/cleanup", token, nil, "", &e))
	assert.Equal(t, 404, s.call("POST", "/v1/vms/ghost/reconcile", token, nil, "", &e))
	fmt.Fprint(io.Discard, e)
}

// With the queue's database away (here the SQLite file deleted under the
// service), a submission answers 503 saying what happened and what to do,
// not a bare 500, and stores nothing.
func TestASubmissionWhileTheDatabaseIsAwayIsAnswered503(t *testing.T) {
	s := newService(t)
	require.NoError(t, os.Remove(filepath.Join(s.dir, "queue.db")))
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := s.client.Get(s.url + "/readyz")
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusServiceUnavailable {
			break
		}
		require.True(t, time.Now().Before(deadline), "the service did not notice its database was gone")
		time.Sleep(100 * time.Millisecond) // the service checks its file every second
	}
	body, ct := form(t, "a.txt", []byte("a sample"), "profile", "clamav")
	var e errorJSON
	assert.Equal(t, http.StatusServiceUnavailable, s.call("POST", "/v1/tasks", token, body, ct, &e))
	assert.Equal(t, "unavailable", e.Error.Code)
	assert.Contains(t, e.Error.Message, "restart the service", "it says what to do")
	counts, err := s.queue.Counts(context.Background())
	require.NoError(t, err, "the file still open reads")
	assert.Empty(t, counts, "nothing was queued")
}
