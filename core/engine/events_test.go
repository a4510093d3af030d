package engine_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/engine"
)

// A VM's recent history keeps what a picture of its last minutes needs:
// the events of the window and the one before it, never more than the
// bound, each VM apart.
func TestEventsKeepABoundedRecentHistoryPerVM(t *testing.T) {
	ev := engine.NewEvents()
	start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	at := func(d time.Duration) time.Time { return start.Add(d) }
	ev.Publish(engine.Event{VM: "a", Step: engine.StepPreparing, At: at(0)})
	ev.Publish(engine.Event{VM: "a", Step: engine.StepRestoring, At: at(time.Minute)})
	ev.Publish(engine.Event{VM: "b", Step: engine.StepPreparing, At: at(time.Minute)})
	ev.Publish(engine.Event{Step: engine.StepQueued, At: at(time.Minute)}) // no VM: no history
	ev.Publish(engine.Event{VM: "a", Step: engine.StepDone, At: at(3 * time.Minute)})

	h := ev.History(at(2 * time.Minute))
	require.Len(t, h, 2)
	require.Len(t, h["a"], 2, "the event before the window says what the VM was doing when it began")
	assert.Equal(t, engine.StepRestoring, h["a"][0].Step)
	assert.Equal(t, engine.StepDone, h["a"][1].Step)
	assert.Len(t, h["b"], 1)
	assert.Len(t, ev.History(at(-time.Hour))["a"], 3)

	// Events older than the window go, all but the last of them.
	ev.Publish(engine.Event{VM: "a", Step: engine.StepPreparing, At: at(engine.HistoryWindow + 2*time.Minute)})
	h = ev.History(at(-time.Hour))
	require.Len(t, h["a"], 3, "the event of 0:00 fell out of the window and is not needed")
	assert.Equal(t, engine.StepRestoring, h["a"][0].Step)

	// However many events come within the window, at most HistoryLimit
	// are kept.
	for i := range 3 * engine.HistoryLimit {
		ev.Publish(engine.Event{VM: "c", Step: engine.StepAnalyzing, At: at(time.Duration(i) * time.Millisecond)})
	}
	h = ev.History(at(-time.Hour))
	require.Len(t, h["c"], engine.HistoryLimit)
	assert.Equal(t, at(time.Duration(3*engine.HistoryLimit-1)*time.Millisecond), h["c"][engine.HistoryLimit-1].At, "the newest kept")

	var none *engine.Events
	assert.Empty(t, none.History(start))
}
