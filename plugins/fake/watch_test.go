package fake

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/hypervisor"
)

func TestWatchSendsTheCurrentStatusFirst(t *testing.T) {
	t.Parallel()
	d := newFake(t, "[vms.a]\nstate = \"paused\"\nsnapshots = [\"clean\"]")
	ch, err := d.Watch(testCtx(t), "a")
	require.NoError(t, err)
	assert.Equal(t, status(t, d, "a"), <-ch)
}

func TestWatchFollowsAStartThroughToRunning(t *testing.T) {
	t.Parallel()
	d := newFake(t, "[timing]\nstart = \"500ms\"\n[vms.a]")
	ch, err := d.Watch(testCtx(t), "a")
	require.NoError(t, err)
	assert.Equal(t, hypervisor.PowerOff, (<-ch).Power)
	require.NoError(t, d.Start(testCtx(t), "a"))
	starting := <-ch
	assert.Equal(t, hypervisor.PowerStarting, starting.Power, "a change an operation made")
	running := <-ch
	assert.Equal(t, hypervisor.PowerRunning, running.Power, "a transition that fell due")
	assert.GreaterOrEqual(t, running.StateChanged.Sub(starting.StateChanged), 500*time.Millisecond)
}

func TestWatchReportsARestoredSnapshot(t *testing.T) {
	t.Parallel()
	d := newFake(t, "[timing]\nrestore = \"300ms\"\n[vms.a]\nsnapshots = [\"clean\", \"other\"]\ncurrent_snapshot = \"other\"")
	ch, err := d.Watch(testCtx(t), "a")
	require.NoError(t, err)
	<-ch
	require.NoError(t, d.Restore(testCtx(t), "a", "clean"))
	st := waitStatus(t, d, "a", "clean", func(st hypervisor.Status) bool { return st.CurrentSnapshot == "clean" })
	assert.Equal(t, hypervisor.PowerOff, st.Power)
	assert.Equal(t, hypervisor.PowerRestoring, (<-ch).Power)
	assert.Equal(t, "clean", (<-ch).CurrentSnapshot)
}

func TestWatchClosesWhenItsContextEnds(t *testing.T) {
	t.Parallel()
	d := newFake(t, "[vms.a]\nstate = \"running\"")
	ctx, cancel := context.WithCancel(context.Background())
	ch, err := d.Watch(ctx, "a")
	require.NoError(t, err)
	<-ch
	cancel()
	select {
	case _, open := <-ch:
		assert.False(t, open)
	case <-time.After(waitLimit):
		t.Fatal("the channel stayed open")
	}
}

func TestWatchClosesWhenTheDriverCloses(t *testing.T) {
	t.Parallel()
	d := newFake(t, "[vms.a]\nstate = \"running\"")
	ch, err := d.Watch(testCtx(t), "a")
	require.NoError(t, err)
	<-ch
	require.NoError(t, d.Close())
	select {
	case _, open := <-ch:
		assert.False(t, open)
	case <-time.After(waitLimit):
		t.Fatal("the channel stayed open")
	}
}

func TestWatchOfAChangelessVMSendsOnlyOnce(t *testing.T) {
	t.Parallel()
	d := newFake(t, "[vms.a]\n[vms.b]\nstate = \"running\"")
	ch, err := d.Watch(testCtx(t), "a")
	require.NoError(t, err)
	<-ch
	require.NoError(t, d.Stop(testCtx(t), "b", hypervisor.StopPowerOff), "a change elsewhere")
	waitFor(t, d, "b", hypervisor.PowerOff, hypervisor.LockUnlocked)
	select {
	case st := <-ch:
		t.Fatalf("a's watch sent %+v though a did not change", st)
	default:
	}
}
