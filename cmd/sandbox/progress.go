package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/mattn/go-isatty"

	"github.com/sandboxhq/sandbox/core/lifecycle"
)

// liveLine shows a long operation as it runs: one line on a terminal,
// rewritten in place with the current step, the elapsed time and the last
// state seen. Off a terminal it shows nothing, so that scripts and logs
// get only the final report.
type liveLine struct {
	w     io.Writer
	mu    sync.Mutex
	last  lifecycle.Progress
	start time.Time
	stop  chan struct{}
	done  chan struct{}
}

// newLiveLine returns nil when w is not a terminal.
func newLiveLine(w io.Writer) *liveLine {
	f, ok := w.(*os.File)
	if !ok || !(isatty.IsTerminal(f.Fd()) || isatty.IsCygwinTerminal(f.Fd())) {
		return nil
	}
	l := &liveLine{w: w, start: time.Now(), stop: make(chan struct{}), done: make(chan struct{})}
	go l.tick()
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

// tick keeps the elapsed time moving between updates.
func (l *liveLine) tick() {
	defer close(l.done)
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			l.mu.Lock()
			l.render()
			l.mu.Unlock()
		case <-l.stop:
			return
		}
	}
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
	close(l.stop)
	<-l.done
	fmt.Fprint(l.w, "\r\033[K")
}
