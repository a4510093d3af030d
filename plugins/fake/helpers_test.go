package fake

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

// waitLimit bounds every wait for a state in these tests; the fake's
// timings are tens of milliseconds, so reaching it means a bug.
const waitLimit = 5 * time.Second

// fakeTOML turns the fake's table, written with headers relative to it
// ("[vms.a]"), into a whole config.toml.
func fakeTOML(table string) string {
	var b strings.Builder
	b.WriteString("[plugins.fake.config]\n")
	for _, line := range strings.Split(table, "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "[") {
			line = "[plugins.fake.config." + line[1:]
		}
		b.WriteString(line + "\n")
	}
	return b.String()
}

// configIn writes the table as config.toml in dir and returns the SDK's
// view of it, as a plugin receives it from the host.
func configIn(t *testing.T, dir, table string) sdk.Config {
	t.Helper()
	path := filepath.Join(dir, "config.toml")
	data := []byte(fakeTOML(table))
	require.NoError(t, os.WriteFile(path, data, 0o644))
	return sdk.ConfigFromTOML("fake", path, data)
}

// openFake opens a fake from the table in dir and closes it when the test ends.
func openFake(t *testing.T, dir, table string) *Driver {
	t.Helper()
	drv, err := New(configIn(t, dir, table), hclog.NewNullLogger())
	require.NoError(t, err)
	d := drv.(*Driver)
	t.Cleanup(func() { d.Close() })
	return d
}

// newFake opens a fake from its table in a fresh directory.
func newFake(t *testing.T, table string) *Driver {
	t.Helper()
	return openFake(t, t.TempDir(), table)
}

func testCtx(t *testing.T) context.Context {
	t.Helper()
	return plugintest.Context(t, waitLimit)
}

// expiredCtx is a context whose deadline has already passed.
func expiredCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	t.Cleanup(cancel)
	return ctx
}

// requireCode asserts that err is a contract error with the code, naming
// the operation and the VM.
func requireCode(t *testing.T, err error, code hypervisor.Code, op, vm string) *hypervisor.Error {
	t.Helper()
	require.Error(t, err)
	var e *hypervisor.Error
	require.True(t, errors.As(err, &e), "not a *hypervisor.Error: %T %v", err, err)
	require.Equal(t, code.String(), e.Code.String(), "error: %v", err)
	assert.Equal(t, op, e.Op, "error: %v", err)
	assert.Equal(t, vm, e.VM, "error: %v", err)
	return e
}

func status(t *testing.T, d *Driver, vm string) hypervisor.Status {
	t.Helper()
	st, err := d.Status(testCtx(t), vm)
	require.NoError(t, err)
	return st
}

// waitStatus waits on a watch of the VM until its status satisfies ok.
func waitStatus(t *testing.T, d *Driver, vm string, what string, ok func(hypervisor.Status) bool) hypervisor.Status {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	ch, err := d.Watch(ctx, vm)
	require.NoError(t, err)
	var last hypervisor.Status
	for st := range ch {
		if ok(st) {
			return st
		}
		last = st
	}
	require.FailNow(t, "VM never reached the state", "%s: waited for %s; last status %+v", vm, what, last)
	return last
}

// waitFor waits until the VM is in power state p with lock l.
func waitFor(t *testing.T, d *Driver, vm string, p hypervisor.PowerState, l hypervisor.LockState) hypervisor.Status {
	t.Helper()
	return waitStatus(t, d, vm, string(p)+"/"+string(l), func(st hypervisor.Status) bool {
		return st.Power == p && st.Lock == l
	})
}

// noChangeWithin asserts that a watch of the VM reports nothing new for d:
// the way to check that something does not happen by itself.
func noChangeWithin(t *testing.T, drv *Driver, vm string, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, err := drv.Watch(ctx, vm)
	require.NoError(t, err)
	first := <-ch
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case st := <-ch:
		assert.Failf(t, "the VM changed by itself", "from %+v to %+v", first, st)
	case <-timer.C:
	}
}

// journalOps is the journal as "op method" words, for compact assertions.
func journalOps(d *Driver) []string {
	var out []string
	for _, e := range d.Journal() {
		w := e.Op
		if e.Method != "" {
			w += " " + string(e.Method)
		}
		out = append(out, w)
	}
	return out
}

// exits replaces the process exit of exit_during faults with a record.
func exits(d *Driver) *[]int {
	var codes []int
	d.exit = func(code int) { codes = append(codes, code) }
	return &codes
}

// actionsOf lists the actions of a native cleanup's steps.
func actionsOf(res hypervisor.CleanupResult) []string {
	var out []string
	for _, s := range res.Steps {
		out = append(out, s.Action)
	}
	return out
}
