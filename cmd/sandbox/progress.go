package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/mattn/go-isatty"

	"github.com/sandboxhq/sandbox/core/engine"
	"github.com/sandboxhq/sandbox/core/lifecycle"
)

// liveLine shows a long operation as it runs: one line on a terminal,
// rewritten in place with the current step, the elapsed time and the last
// state seen. Off a terminal it shows nothing, so that scripts and logs
// get only the final report.
type liveLine struct {
	repaint
	w     io.Writer
	last  lifecycle.Progress
	start time.Time
}

// repaint redraws a live display on a timer, so that elapsed times move
// between updates; render runs with mu held.
type repaint struct {
	mu   sync.Mutex
	stop chan struct{}
	done chan struct{}
}

func (r *repaint) begin(period time.Duration, render func()) {
	r.stop, r.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(r.done)
		t := time.NewTicker(period)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				r.mu.Lock()
				render()
				r.mu.Unlock()
			case <-r.stop:
				return
			}
		}
	}()
}

// end stops the timer and returns with mu held, for a last word.
func (r *repaint) end() {
	close(r.stop)
	<-r.done
	r.mu.Lock()
}

// newLiveLine returns nil when w is not a terminal.
func newLiveLine(w io.Writer) *liveLine {
	f, ok := w.(*os.File)
	if !ok || !(isatty.IsTerminal(f.Fd()) || isatty.IsCygwinTerminal(f.Fd())) {
		return nil
	}
	l := &liveLine{w: w, start: time.Now()}
	l.begin(200*time.Millisecond, l.render)
	return l
}

// update is the lifecycle.WithProgress callback.
func (l *liveLine) update(p lifecycle.Progress) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if p.State.Power == "" {
		p.State = l.last.State
	}
	if len(p.Step) > 6 && p.Step[:6] == "state " {
		p.Step = l.last.Step
	}
	l.last = p
	l.render()
}

func (l *liveLine) render() {
	state := ""
	if l.last.State.Power != "" {
		state = fmt.Sprintf("  [%s/%s]", l.last.State.Power, l.last.State.Lock)
	}
	fmt.Fprintf(l.w, "\r\033[K%s: %s  %s%s", l.last.VM, l.last.Step, time.Since(l.start).Round(100*time.Millisecond), state)
}

// close erases the line.
func (l *liveLine) close() {
	if l == nil {
		return
	}
	l.end()
	defer l.mu.Unlock()
	fmt.Fprint(l.w, "\r\033[K")
}

// liveTable shows a run as it goes: one line per VM with its task's
// current step, sample and time in the step, redrawn in place on a
// terminal. Off a terminal it shows nothing.
type liveTable struct {
	repaint
	w     io.Writer
	vms   []string
	rows  map[string]engine.Event
	drawn int
}

// newLiveTable returns nil when w is not a terminal.
func newLiveTable(w io.Writer, vms []string) *liveTable {
	f, ok := w.(*os.File)
	if !ok || !(isatty.IsTerminal(f.Fd()) || isatty.IsCygwinTerminal(f.Fd())) {
		return nil
	}
	l := &liveTable{w: w, rows: map[string]engine.Event{}, vms: vms}
	l.begin(250*time.Millisecond, l.render)
	return l
}

// update subscribes to the engine's events.
func (l *liveTable) update(e engine.Event) {
	if l == nil || e.VM == "" {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.rows[e.VM] = e
	l.render()
}

func (l *liveTable) render() {
	var b strings.Builder
	if l.drawn > 0 {
		fmt.Fprintf(&b, "\033[%dA", l.drawn)
	}
	width := 0
	for _, vm := range l.vms {
		width = max(width, len(vm))
	}
	for _, vm := range l.vms {
		e, ok := l.rows[vm]
		line := fmt.Sprintf("%-*s  idle", width, vm)
		if ok {
			line = fmt.Sprintf("%-*s  %-13s %s  %s  %s", width, vm, e.Step, time.Since(e.At).Round(100*time.Millisecond), e.Profile, e.Sample)
		}
		fmt.Fprintf(&b, "\r\033[K%s\n", line)
	}
	l.drawn = len(l.vms)
	fmt.Fprint(l.w, b.String())
}

// close erases the table.
func (l *liveTable) close() {
	if l == nil {
		return
	}
	l.end()
	defer l.mu.Unlock()
	if l.drawn > 0 {
		fmt.Fprintf(l.w, "\033[%dA\r\033[J", l.drawn)
	}
}
