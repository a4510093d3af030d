package api_test

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/engine"
	"github.com/sandboxhq/sandbox/core/statedir"
)

// Launched with envHolder set, the test binary takes a VM's lease in a
// state directory and holds it until killed: a real other process, which
// can die holding it.
const envHolder = "API_TEST_HOLD_LEASE_IN"

func TestMain(m *testing.M) {
	if dir := os.Getenv(envHolder); dir != "" {
		d, err := statedir.Open(dir)
		if err != nil {
			panic(err)
		}
		if _, err := d.Leases().Acquire(context.Background(), "fake/linux"); err != nil {
			panic(err)
		}
		fmt.Println("held")
		select {}
	}
	os.Exit(m.Run())
}

// dieHolding makes another process take the Linux VM's lease in the
// service's state directory and die holding it, as a crashed sandbox
// would.
func (s *service) dieHolding() int {
	s.t.Helper()
	exe, err := os.Executable()
	require.NoError(s.t, err)
	holder := exec.Command(exe)
	holder.Env = append(os.Environ(), envHolder+"="+s.state.Path())
	out, err := holder.StdoutPipe()
	require.NoError(s.t, err)
	require.NoError(s.t, holder.Start())
	line, err := bufio.NewReader(out).ReadString('\n')
	require.NoError(s.t, err)
	require.Equal(s.t, "held\n", line)
	require.NoError(s.t, holder.Process.Kill())
	_ = holder.Wait()
	return holder.Process.Pid
}

// journalLines counts the commands that reached the fake hypervisor.
func journalLines(t *testing.T, path string) int {
	t.Helper()
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return 0
	}
	require.NoError(t, err)
	return strings.Count(string(data), "\n")
}

// The page and the task pages need the token unless the page is public: a
// browser is sent to sign in, the token (as for the API) or the session
// the sign-in sets lets it through, and the session opens no /v1 call.
func TestThePagesNeedTheTokenUnlessPublic(t *testing.T) {
	s := newService(t)
	task := s.submit("eicar.com", eicar())
	s.wait(task.ID)

	noFollow := &http.Client{Transport: s.client.Transport, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}
	for _, path := range []string{"/", "/tasks/" + task.ID, "/tasks/" + task.ID + "/report.json"} {
		resp, err := noFollow.Get(s.url + path)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusSeeOther, resp.StatusCode, path)
		assert.Equal(t, "/login?next="+url.QueryEscape(path), resp.Header.Get("Location"), path)
	}
	assert.Contains(t, s.page("/", token), "eicar.com", "the token opens the page")
	assert.Contains(t, s.page("/tasks/"+task.ID, "bEaReR-is-not-the-token"[:0]+token), task.ID)

	// A wrong token at the sign-in is refused; the right one sets a
	// session that opens the pages and goes where the person was going.
	resp, err := noFollow.PostForm(s.url+"/login", url.Values{"token": {"wrong-token-0123456789"}, "next": {"/tasks/" + task.ID}})
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	assert.Empty(t, resp.Cookies())
	resp, err = noFollow.PostForm(s.url+"/login", url.Values{"token": {token}, "next": {"/tasks/" + task.ID}})
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	assert.Equal(t, "/tasks/"+task.ID, resp.Header.Get("Location"))
	require.Len(t, resp.Cookies(), 1)
	session := resp.Cookies()[0]
	assert.True(t, session.HttpOnly)
	assert.Equal(t, http.SameSiteStrictMode, session.SameSite)
	assert.NotContains(t, session.Value, token, "the cookie does not give the token away")

	req, _ := http.NewRequest("GET", s.url+"/", nil)
	req.AddCookie(session)
	resp, err = noFollow.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode, "the session opens the page")
	req, _ = http.NewRequest("GET", s.url+"/v1/tasks", nil)
	req.AddCookie(session)
	resp, err = noFollow.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, "a session opens no API call")

	// A sign-in never sends the browser to another site.
	resp, err = noFollow.PostForm(s.url+"/login", url.Values{"token": {token}, "next": {"//evil.example/"}})
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, "/", resp.Header.Get("Location"))

	public := newService(t, withServer(func(c *config.Server) { c.PublicPage = true }))
	assert.Contains(t, public.page("/", ""), "Latest tasks", "public_page = true opens the page to anyone")
}

// The page reads the database and the event stream, never a hypervisor:
// however often it is loaded, no command reaches the driver.
func TestThePageAsksNoHypervisor(t *testing.T) {
	journal := filepath.Join(t.TempDir(), "journal.jsonl")
	s := newService(t, func(o *serviceOptions) {
		o.world = strings.Replace(fakeWorld, "[plugins.fake.config]\n", fmt.Sprintf("[plugins.fake.config]\njournal = %q\n", journal), 1)
	})
	task := s.submit("eicar.com", eicar())
	s.wait(task.ID)
	time.Sleep(100 * time.Millisecond) // the last cleanup's status reads land in the journal
	before := journalLines(t, journal)
	require.Positive(t, before, "the journal records the driver's commands")
	for range 20 {
		s.page("/", token)
		s.page("/tasks/"+task.ID, token)
	}
	assert.Equal(t, before, journalLines(t, journal), "loading the pages reached the hypervisor")
}

// The notes of the VM table: a quarantined VM says why, a VM a dead
// process left behind says who.
func TestThePageNotesWhatIsWrongWithAVM(t *testing.T) {
	s := newService(t, withStateDir)
	pid := s.dieHolding()
	require.NoError(t, s.qr.Mark(context.Background(), "fake/win", "the snapshot clean is gone"))
	page := s.page("/", token)
	assert.Contains(t, page, "quarantined since")
	assert.Contains(t, page, "the snapshot clean is gone")
	assert.Contains(t, page, fmt.Sprintf("left behind by a process that died holding it (pid %d", pid))
}

// chromium finds a headless-capable Chromium: SANDBOX_TEST_CHROMIUM, else
// the usual names on PATH.
func chromium(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("browser test skipped: -short (make test-short) leaves out what needs a browser")
	}
	if p := os.Getenv("SANDBOX_TEST_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("no Chromium: .ci/run installs Debian's chromium; elsewhere install it or set SANDBOX_TEST_CHROMIUM")
	return ""
}

// browser is a headless Chromium for one test, with what its console
// reported as errors, warnings or exceptions.
type browser struct {
	ctx      context.Context
	mu       sync.Mutex
	problems []string
}

func newBrowser(t *testing.T) *browser {
	exe := chromium(t)
	opts := append(chromedp.DefaultExecAllocatorOptions[:0:0],
		chromedp.ExecPath(exe), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck, chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1280, 900),
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelAlloc)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(cancel)
	ctx, cancelTimeout := context.WithTimeout(ctx, 90*time.Second)
	t.Cleanup(cancelTimeout)
	b := &browser{ctx: ctx}
	// Subscribed before any page loads, so that no message is lost.
	messages := chromedp.Console(ctx)
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			if m.Type == chromedp.ConsoleError || m.Type == chromedp.ConsoleWarning || m.IsException() {
				b.mu.Lock()
				b.problems = append(b.problems, m.String()+" "+m.URL)
				b.mu.Unlock()
			}
		}
	}()
	return b
}

func (b *browser) text(t *testing.T, sel string) string {
	t.Helper()
	s, err := chromedp.Run(b.ctx, chromedp.Text(sel))
	require.NoError(t, err)
	return s
}

func (b *browser) count(t *testing.T, sel string) int {
	t.Helper()
	nodes, err := chromedp.Run(b.ctx, chromedp.Nodes(sel, chromedp.AtLeast(0)))
	require.NoError(t, err)
	return len(nodes)
}

// screenshot keeps the page as a PNG in the test's directory (and where
// SANDBOX_KEEP_SCREENSHOT says, for the docs).
func (b *browser) screenshot(t *testing.T, name string) {
	t.Helper()
	shot, err := chromedp.Run(b.ctx, chromedp.FullScreenshot(100))
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.WriteFile(path, shot, 0o644))
	t.Logf("screenshot: %s (%d bytes)", path, len(shot))
	if dir := os.Getenv("SANDBOX_KEEP_SCREENSHOT"); dir != "" {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), shot, 0o644))
	}
	assert.Greater(t, len(shot), 10000, "a page, not a blank")
}

// The pages in a real browser, as a person uses them: signed in with the
// token, the status page draws each VM's timeline, notes the quarantined
// VM and shows the failed task's reason; its link leads to the task's
// page, with the failed step and the reason and each analysis's timeline.
// The browser reports no console error, also past a self-refresh.
func TestThePagesInAHeadlessBrowser(t *testing.T) {
	s := newService(t, withSlow, func(o *serviceOptions) {
		o.world = fakeWorld + "[plugins.fake.config.vms.linux.faults]\ncopy_in_failures = 1\n"
	})
	failed := s.wait(s.submit("report.pdf", []byte("%PDF-1.7 not really"), "profile", "clamav").ID)
	require.Equal(t, "failed", failed.State)
	require.Len(t, failed.Results, 1)
	failedStep := failed.Results[0].FailedStep
	require.NotEmpty(t, failedStep)
	s.wait(s.submit("eicar.com", eicar(), "profile", "clamav,defender").ID)
	s.wait(s.submit("notes.txt", []byte("nothing to see\n"), "profile", "clamav,defender").ID)
	// A long analysis holds the Linux VM; a task waiting behind it is
	// cancelled; the Windows VM is quarantined.
	running := s.submit("setup.exe", []byte("MZ a long scan"), "profile", "slow")
	s.waitStep("linux", engine.StepAnalyzing)
	cancelled := s.submit("invoice.doc", []byte("a document"), "profile", "clamav")
	require.Equal(t, http.StatusOK, s.call("POST", "/v1/tasks/"+cancelled.ID+"/cancel", token, nil, "", nil))
	require.NoError(t, s.qr.Mark(context.Background(), "fake/win", "its disk image went missing"))

	b := newBrowser(t)
	require.NoError(t, chromedp.Do(b.ctx, chromedp.Navigate(s.url+"/"), chromedp.WaitVisible("#token")))
	require.NoError(t, chromedp.Do(b.ctx, chromedp.SendKeys("#token", token), chromedp.Click("#sign-in"), chromedp.WaitVisible("#tasks")))

	vms := b.text(t, "#vms")
	assert.Contains(t, vms, "linux")
	assert.Contains(t, vms, "quarantined since")
	assert.Contains(t, vms, "its disk image went missing")
	assert.Equal(t, 2, b.count(t, "#timeline svg g.lane"), "a lane per VM")
	assert.Positive(t, b.count(t, `#timeline g.lane[data-lane="linux"] rect.s-analyzing`), "the Linux VM's long analysis drawn")
	assert.Positive(t, b.count(t, `#timeline g.lane[data-lane="linux"] line.m-failed`), "the failed task's end marked")
	assert.Contains(t, b.text(t, `#vms tr[data-vm="linux"]`), "analyzing")
	tasks := b.text(t, "#tasks")
	assert.Contains(t, tasks, "eicar.com")
	assert.Contains(t, tasks, "malicious")
	assert.Contains(t, tasks, "at "+failedStep+":", "the failed step")
	assert.Equal(t, "cancelled", b.text(t, `tr[data-task="`+cancelled.ID+`"] td.cancelled`), "cancelled is shown as cancelled")
	assert.Contains(t, b.text(t, `tr[data-task="`+running.ID+`"]`), "analyzing")
	b.screenshot(t, "status-page.png")

	require.NoError(t, chromedp.Do(b.ctx, chromedp.Click(`tr[data-task="`+failed.ID+`"] a`), chromedp.WaitVisible("#state")))
	assert.Equal(t, "failed", b.text(t, "#state"))
	analysis := b.text(t, `section[data-profile="clamav"]`)
	assert.Contains(t, analysis, "Failed step\t"+failedStep)
	assert.Contains(t, b.text(t, `section[data-profile="clamav"] .failure`), "VERR_SHARING_VIOLATION", "the reason")
	assert.Equal(t, 1, b.count(t, "#timeline svg g.lane"), "a lane per analysis")
	assert.Positive(t, b.count(t, "#timeline rect.s-cleaning"), "the cleanup after the failure drawn")
	b.screenshot(t, "task-page.png")

	// Back to the page, and past its refresh: still no error.
	require.NoError(t, chromedp.Do(b.ctx, chromedp.Navigate(s.url+"/"), chromedp.WaitVisible("#tasks"),
		chromedp.Sleep(6*time.Second), chromedp.WaitVisible("#tasks")))
	b.mu.Lock()
	defer b.mu.Unlock()
	assert.Empty(t, b.problems, "the browser reported problems")
}
