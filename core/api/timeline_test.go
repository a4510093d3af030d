package api

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/engine"
)

// A lane shows each step as a bar from its start to the next step, a
// task's end as a mark, and what came before the window from its start.
func TestAVMTimelineDrawsStepsAndEnds(t *testing.T) {
	to := time.Date(2026, 1, 1, 12, 10, 0, 0, time.UTC)
	from := to.Add(-10 * time.Minute)
	h := map[string][]engine.Event{"vm": {
		{Step: engine.StepAnalyzing, At: from.Add(-time.Minute)},
		{Step: engine.StepCleaning, At: from.Add(5 * time.Minute)},
		{Step: engine.StepFailed, At: from.Add(6 * time.Minute), Detail: "the scanner crashed"},
		{Step: engine.StepRestoring, At: from.Add(8 * time.Minute)},
	}}
	tl := vmTimeline([]string{"vm", "idle"}, h, from, to)
	require.Len(t, tl.Lanes, 2)
	l := tl.Lanes[0]
	require.Len(t, l.Bars, 3)
	assert.Equal(t, "s-analyzing", l.Bars[0].Class)
	assert.InDelta(t, labelWidth, l.Bars[0].X, 0.01, "from the window's start")
	assert.InDelta(t, plotWidth/2, l.Bars[0].W, 0.01, "five minutes of ten")
	assert.Equal(t, "s-cleaning", l.Bars[1].Class)
	assert.Equal(t, "s-restoring", l.Bars[2].Class)
	assert.InDelta(t, labelWidth+plotWidth, l.Bars[2].X+l.Bars[2].W, 0.01, "a step under way reaches now")
	require.Len(t, l.Marks, 1)
	assert.Equal(t, "m-failed", l.Marks[0].Class)
	assert.Contains(t, l.Marks[0].Title, "the scanner crashed")
	assert.Empty(t, tl.Lanes[1].Bars, "a VM with no history is an empty lane")
}

// However many short steps a VM went through, a lane holds no more
// elements than it has pixels, and failures are never hidden by the
// successes around them.
func TestAVMTimelineStaysSmall(t *testing.T) {
	to := time.Date(2026, 1, 1, 12, 10, 0, 0, time.UTC)
	from := to.Add(-10 * time.Minute)
	var h []engine.Event
	steps := []engine.Step{engine.StepPreparing, engine.StepRestoring, engine.StepStarting, engine.StepAnalyzing, engine.StepCleaning, engine.StepDone}
	for i := range 20000 {
		at := from.Add(time.Duration(i) * 30 * time.Millisecond)
		step := steps[i%len(steps)]
		if i == 9005 { // a task's end, among thousands
			step = engine.StepFailed
		}
		h = append(h, engine.Event{Step: step, At: at, Task: fmt.Sprint(i / len(steps))})
	}
	tl := vmTimeline([]string{"vm"}, map[string][]engine.Event{"vm": h}, from, to)
	l := tl.Lanes[0]
	assert.LessOrEqual(t, len(l.Bars), int(plotWidth)*2+1)
	assert.LessOrEqual(t, len(l.Marks), int(plotWidth)*2+1)
	failed := 0
	for _, m := range l.Marks {
		if m.Class == "m-failed" {
			failed++
		}
	}
	assert.Equal(t, 1, failed, "the failure is drawn")
}
