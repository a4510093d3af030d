package api_test

import (
	"context"
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
)

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

// TestTheStatusPageInAHeadlessBrowser loads the page in a real browser
// once a task has ended: it shows the VMs and the task, the browser
// reports no console error, and a screenshot is kept in the test's
// directory.
func TestTheStatusPageInAHeadlessBrowser(t *testing.T) {
	exe := chromium(t)
	s := newService(t)
	s.wait(s.submit("eicar.com", eicar()).ID)

	opts := append(chromedp.DefaultExecAllocatorOptions[:0:0],
		chromedp.ExecPath(exe), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck, chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	ctx, cancelTimeout := context.WithTimeout(ctx, 60*time.Second)
	defer cancelTimeout()

	// Subscribe before the page loads, so that no message is lost; read
	// in the background what the console says, errors and warnings kept.
	messages := chromedp.Console(ctx)
	var mu sync.Mutex
	var problems []string
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			if m.Type == chromedp.ConsoleError || m.Type == chromedp.ConsoleWarning || m.IsException() {
				mu.Lock()
				problems = append(problems, m.String()+" "+m.URL)
				mu.Unlock()
			}
		}
	}()

	require.NoError(t, chromedp.Do(ctx, chromedp.Navigate(s.url+"/"), chromedp.WaitVisible("#tasks")))
	vms, err := chromedp.Run(ctx, chromedp.Text("#vms"))
	require.NoError(t, err)
	tasks, err := chromedp.Run(ctx, chromedp.Text("#tasks"))
	require.NoError(t, err)
	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), "status.png")
	require.NoError(t, os.WriteFile(path, shot, 0o644))
	t.Logf("screenshot: %s (%d bytes)", path, len(shot))
	if keep := os.Getenv("SANDBOX_KEEP_SCREENSHOT"); keep != "" {
		require.NoError(t, os.WriteFile(keep, shot, 0o644))
	}
	assert.Greater(t, len(shot), 1000)

	assert.Contains(t, vms, "win")
	assert.Contains(t, vms, "linux")
	assert.Contains(t, vms, "off/unlocked")
	assert.Contains(t, tasks, "eicar.com")
	assert.Contains(t, tasks, "malicious")
	assert.True(t, strings.Contains(tasks, "done"), tasks)

	// Stay past a self-refresh: still no error.
	require.NoError(t, chromedp.Do(ctx, chromedp.Sleep(2500*time.Millisecond), chromedp.WaitVisible("#tasks")))
	mu.Lock()
	defer mu.Unlock()
	assert.Empty(t, problems, "the browser reported problems")
}
