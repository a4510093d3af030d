package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/sandboxhq/sandbox/core/engine"
	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/core/lifecycle"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

func TestLiveLineShowsStepElapsedAndStateAndErasesItself(t *testing.T) {
	t.Parallel()
	var out plugintest.Buffer
	l := &liveLine{w: &out, start: time.Now()}
	l.begin(time.Hour, l.render)
	l.update(lifecycle.Progress{VM: "win10", Step: "stop acpi"})
	l.update(lifecycle.Progress{VM: "win10", Step: "state stopping/locked",
		State: hypervisor.Status{Power: hypervisor.PowerStopping, Lock: hypervisor.LockLocked}})
	l.close()
	s := out.String()
	frames := strings.Split(s, "\r\033[K")
	assert.Contains(t, frames[1], "win10: stop acpi")
	assert.Contains(t, frames[2], "win10: stop acpi", "a state change keeps the step on the line")
	assert.Contains(t, frames[2], "[stopping/locked]")
	assert.True(t, strings.HasSuffix(s, "\r\033[K"), "the line is erased before the report")
}

func TestNoLiveLineOffATerminal(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	l := newLiveLine(&out)
	assert.Nil(t, l)
	l.update(lifecycle.Progress{VM: "x", Step: "y"}) // a nil line ignores updates
	l.close()
	assert.Empty(t, out.String())
}

func TestLiveTableShowsEachVMsStepAndErasesItself(t *testing.T) {
	t.Parallel()
	var out plugintest.Buffer
	l := &liveTable{w: &out, vms: []string{"win10", "ubuntu"}, rows: map[string]engine.Event{}}
	l.begin(time.Hour, l.render)
	l.update(engine.Event{VM: "win10", Step: engine.StepAnalyzing, Profile: "defender", Sample: "a.exe", At: time.Now()})
	l.update(engine.Event{Step: engine.StepQueued, Profile: "clamav", Sample: "a.exe"}) // no VM yet: not shown
	l.close()
	s := out.String()
	assert.Regexp(t, `win10\s+analyzing\s+\S+\s+defender\s+a\.exe`, s)
	assert.Regexp(t, `ubuntu\s+idle`, s)
	assert.NotContains(t, s, "clamav")
	assert.True(t, strings.HasSuffix(s, "\033[2A\r\033[J"), "the two lines are erased before the summary")
}
