package sdk_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

// unclosing is a driver with the bug §10.1 forbids: its watch stops
// sending when the watch's context ends but never closes the channel. Until
// then it sends a status every few milliseconds, so the SDK also has
// something to drain.
type unclosing struct {
	hypervisor.Unimplemented
}

func (unclosing) Info(context.Context) (hypervisor.Info, error) {
	return hypervisor.Info{Name: "unclosing", ContractVersion: 2, Capabilities: hypervisor.NewCapabilities(hypervisor.CapWatch)}, nil
}

func (unclosing) Status(ctx context.Context, vm string) (hypervisor.Status, error) {
	switch vm {
	case "deaf":
		// A hypervisor call that does not watch its context (§12.1).
		time.Sleep(300 * time.Millisecond)
	case "deafer":
		time.Sleep(2 * time.Second)
	}
	return hypervisor.Status{VM: vm, Power: hypervisor.PowerOff, Raw: "off", Lock: hypervisor.LockUnknown}, nil
}

func (unclosing) Start(context.Context, string) error { return nil }

func (unclosing) Stop(context.Context, string, hypervisor.StopMethod) error { return nil }

func (unclosing) Watch(ctx context.Context, vm string) (<-chan hypervisor.Status, error) {
	ch := make(chan hypervisor.Status)
	go func() {
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return // forgets close(ch)
			case <-tick.C:
				select {
				case ch <- hypervisor.Status{VM: vm, Power: hypervisor.PowerOff, Raw: "off"}:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return ch, nil
}

// A driver that never closes its watch channels leaves nothing behind in
// the plugin after its watches were cancelled: the SDK ends each stream
// with its context, gives up on the channel after WatchCloseGrace, counts
// every such watch where the host can read it, and tells the driver's
// author once.
func TestAWatchEndsWithItsContextWhateverTheDriverDoes(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	logs := &plugintest.Buffer{}
	logger := hclog.New(&hclog.LoggerOptions{Output: logs, Level: hclog.Warn})
	p, err := sdk.ServeInProcess(context.Background(), func(sdk.Config, hclog.Logger) (hypervisor.Driver, error) {
		return unclosing{}, nil
	}, sdk.ConfigFromTOML("unclosing", "/etc/sandbox/config.toml", nil), logger)
	require.NoError(t, err)

	const watches = 20
	for i := range watches {
		ctx, cancel := context.WithCancel(context.Background())
		ch, err := p.Watch(ctx, "a")
		require.NoError(t, err, "watch %d", i)
		<-ch
		cancel()
		closed := make(chan struct{})
		go func() {
			for range ch {
			}
			close(closed)
		}()
		select {
		case <-closed:
		case <-time.After(5 * time.Second):
			t.Fatalf("watch %d: the host's channel is still open 5s after its context ended", i)
		}
	}

	// Every abandoned channel is counted, and the count reaches the host with
	// its next answer.
	deadline := time.Now().Add(graceBound())
	for p.Diagnostics().UnclosedWatches < watches && time.Now().Before(deadline) {
		_, err := p.Status(context.Background(), "a")
		require.NoError(t, err)
		time.Sleep(20 * time.Millisecond)
	}
	assert.Equal(t, watches, p.Diagnostics().UnclosedWatches)
	assert.Equal(t, 1, strings.Count(logs.String(), "left a watch channel open"), "one warning per driver:\n%s", logs)
	assert.Contains(t, logs.String(), "§10.1")
	require.NoError(t, p.Close())
}

// serveUnclosing serves the unclosing driver in process until t ends.
func serveUnclosing(t *testing.T) *sdk.InProcess {
	t.Helper()
	p, err := sdk.ServeInProcess(context.Background(), func(sdk.Config, hclog.Logger) (hypervisor.Driver, error) {
		return unclosing{}, nil
	}, sdk.ConfigFromTOML("unclosing", "/etc/sandbox/config.toml", nil), nil)
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	return p
}

// graceBound is how long the test waits for the SDK to give up
// on every channel: the grace, and a margin for a loaded machine.
func graceBound() time.Duration { return sdk.WatchCloseGrace + 10*time.Second }

// An answer given long after the caller's deadline never reaches the
// caller, which got its timeout from the wire; the SDK reports how late it
// came, while the driver is still at it and once it answered.
func TestLateAnswersAreReported(t *testing.T) {
	t.Parallel()
	p := serveUnclosing(t)

	tag, waited := reachDriver(t, p, "deaf", 20*time.Millisecond)

	// While the driver is still at it: late by how long it has run so far
	// (or, on a machine busy enough, by how late it answered).
	time.Sleep(100 * time.Millisecond)
	_, err := p.Status(context.Background(), "a")
	require.NoError(t, err)
	assert.Greater(t, p.Diagnostics().LateFor(hypervisor.OpStatus, "deaf"), 50*time.Millisecond)

	// Once it answered: late by how long it took past the deadline.
	time.Sleep(300 * time.Millisecond)
	_, err = p.Status(context.Background(), "a")
	require.NoError(t, err)
	d := p.Diagnostics()
	assert.Greater(t, d.LateFor(hypervisor.OpStatus, "deaf"), 200*time.Millisecond)
	assert.Zero(t, d.LateFor("", "a"), "calls answered in time are not listed: %v", d.Late)
	assert.Zero(t, d.UnclosedWatches)
	if assert.True(t, d.Tagged[tag].Answered) {
		assert.Less(t, waited, d.Tagged[tag].Took, "the caller had its timeout before the driver answered")
	}
}

// reachDriver calls Status on vm under deadline, tagged, until a call
// reached the driver, and returns its tag and how long the caller waited
// for its timeout: on a busy machine a call this short can time out in
// the caller before it leaves, and then the driver never sees it.
func reachDriver(t *testing.T, p *sdk.InProcess, vm string, deadline time.Duration) (string, time.Duration) {
	t.Helper()
	for i := range 10 {
		tag := fmt.Sprintf("%s-%d-%d", vm, time.Now().UnixNano(), i)
		ctx, cancel := context.WithTimeout(context.Background(), deadline)
		begun := time.Now()
		_, err := p.Status(sdk.TagCall(ctx, tag), vm)
		waited := time.Since(begun)
		cancel()
		require.Equal(t, hypervisor.CodeTimeout, hypervisor.CodeOf(err), "%v", err)
		_, err = p.Status(context.Background(), "a")
		require.NoError(t, err)
		if _, seen := p.Diagnostics().Tagged[tag]; seen {
			return tag, waited
		}
	}
	t.Fatalf("none of 10 calls of %s under a %s deadline reached the driver", vm, deadline)
	return "", 0
}

// A second late answer leaves the worst lateness as it was, but adds to
// the sum, so that a reader can tell it from the first.
func TestLateSumGrowsWithEveryLateAnswer(t *testing.T) {
	t.Parallel()
	p := serveUnclosing(t)

	deaf := func() {
		reachDriver(t, p, "deaf", 20*time.Millisecond)
		time.Sleep(400 * time.Millisecond) // the driver's answer comes 280 ms after the deadline
		_, err := p.Status(context.Background(), "a")
		require.NoError(t, err)
	}
	deaf()
	first := p.Diagnostics().LateSum["status deaf"]
	assert.Greater(t, first, 200*time.Millisecond)
	deaf()
	second := p.Diagnostics().LateSum["status deaf"]
	assert.Greater(t, second-first, 200*time.Millisecond, "the second late answer is added: %s, then %s", first, second)
	assert.Zero(t, p.Diagnostics().LateSum["status a"], "calls answered in time add nothing")
}

// A tagged call is followed through the driver: present and unanswered
// while the driver is at it (late by how long so far), answered once it
// returned; a tag that never reached the driver is missing, and a plugin
// remembers only the most recent tags, however many a caller sends.
// A plugin that has seen no tagged call yet still says it keeps the
// record, so that a caller tells "none of mine reached the driver" from an
// SDK that keeps none.
func TestARecordWithNoTaggedCallStillKeepsTags(t *testing.T) {
	t.Parallel()
	p := serveUnclosing(t)
	_, err := p.Status(context.Background(), "a")
	require.NoError(t, err)
	d := p.Diagnostics()
	assert.Empty(t, d.Tagged)
	assert.True(t, d.KeepsTags)
}

func TestTaggedCallsAreFollowed(t *testing.T) {
	t.Parallel()
	p := serveUnclosing(t)
	read := func() sdk.Diagnostics {
		t.Helper()
		_, err := p.Status(context.Background(), "a")
		require.NoError(t, err)
		return p.Diagnostics()
	}

	// The driver sleeps 2s past the call's 100ms deadline.
	tag, _ := reachDriver(t, p, "deafer", 100*time.Millisecond)
	first := read().Tagged[tag]
	assert.False(t, first.Answered, "the driver sleeps 2s past a 100ms deadline: %s %+v", tag, first)

	bound := time.Now().Add(30 * time.Second)
	var d sdk.Diagnostics
	for d = read(); !d.Tagged[tag].Answered && time.Now().Before(bound); d = read() {
		time.Sleep(20 * time.Millisecond)
	}
	require.True(t, d.Tagged[tag].Answered, "the driver answered within 30s: %+v", d.Tagged)
	assert.Greater(t, d.Tagged[tag].Late, time.Second)
	assert.GreaterOrEqual(t, d.Tagged[tag].Late, first.Late, "a call only gets later")
	deafer := d.Tagged[tag].Took
	assert.Greater(t, deafer, d.Tagged[tag].Late, "the driver's own time counts from the call's arrival, before its deadline")

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := p.Status(sdk.TagCall(ctx, "quick"), "a")
	require.NoError(t, err)
	d = read()
	quick := d.Tagged["quick"]
	assert.True(t, quick.Answered, "answered: %+v", quick)
	assert.Zero(t, quick.Late, "in time")
	assert.Positive(t, quick.Took, "the driver's own time is measured")
	assert.Less(t, quick.Took, deafer, "a status read takes the driver less than a 2s sleep")
	assert.NotContains(t, d.Tagged, "never-sent")

	// A plugin keeps the record of the most recent 64 tags.
	for i := range 100 {
		_, err := p.Status(sdk.TagCall(ctx, fmt.Sprintf("many-%d", i)), "a")
		require.NoError(t, err)
	}
	_, err = p.Status(ctx, "a")
	require.NoError(t, err)
	var kept int
	for tag := range p.Diagnostics().Tagged {
		if strings.HasPrefix(tag, "many-") {
			kept++
		}
	}
	assert.Equal(t, 64, kept, "the plugin and the host keep the 64 most recent tags")
}
