package api

import (
	"fmt"
	"time"

	"github.com/sandboxhq/sandbox/core/engine"
)

// A timeline is drawn on the server as SVG: one lane per VM (the page) or
// per analysis (a task's page), a bar for each step the lane went through
// and a mark where a task ended. Nothing runs in the browser.

// timeline is an SVG picture of lanes over a span of time.
type timeline struct {
	// Label names the picture for those who cannot see it.
	Label         string
	Width, Height float64
	// Left is where the plot begins, after the lanes' labels, and
	// PlotWidth how wide it is.
	Left, PlotWidth float64
	Lanes           []lane
	Ticks           []tick
	// AxisY is where the time axis's labels go, TickEnd where its lines
	// end.
	AxisY, TickEnd float64
}

// lane is one row: its label and what happened in it.
type lane struct {
	Label    string
	Y, TextY float64
	Bars     []bar
	Marks    []mark
}

// bar is a step: from X, W wide; Text is written inside when it fits.
type bar struct {
	X, W, Y      float64
	TextX, TextY float64
	Class        string
	Title        string
	Text         string
}

// mark is the end of a task, a line from Y to Y2.
type mark struct {
	X, Y, Y2 float64
	Class    string
	Title    string
}

func newLane(label string, i int) lane {
	y := 4 + float64(i)*laneHeight
	return lane{Label: label, Y: y, TextY: y + 12}
}

// add places a bar in the lane. Bars come in time order; one that would
// be hidden under the pixel the last one ends on is left out, so that a
// VM running hundreds of short tasks costs a few hundred elements at
// most, not one per step.
func (l *lane) add(b bar) {
	if n := len(l.Bars); n > 0 {
		end := l.Bars[n-1].X + l.Bars[n-1].W
		if b.X+b.W <= end+0.5 {
			return
		}
		if b.X < end {
			b.W -= end - b.X
			b.X = end
		}
	}
	b.Y, b.TextX, b.TextY = l.Y, b.X+3, l.Y+12
	if b.W <= charWidth*float64(len(b.Text))+6 {
		b.Text = ""
	}
	l.Bars = append(l.Bars, b)
}

// mark places an end mark in the lane; within a pixel of the last one,
// only a failure or a cancellation is added.
func (l *lane) mark(m mark) {
	if n := len(l.Marks); n > 0 && m.X-l.Marks[n-1].X < 1 && (m.Class == "m-done" || m.Class == l.Marks[n-1].Class) {
		return
	}
	m.Y, m.Y2 = l.Y-2, l.Y+barHeight+2
	l.Marks = append(l.Marks, m)
}

// tick is a label on the time axis.
type tick struct {
	X     float64
	Label string
}

const (
	laneHeight = 22.0
	barHeight  = 16.0
	plotWidth  = 720.0
	labelWidth = 130.0
	// textWidth is about how wide a character of a bar's text is.
	charWidth = 6.5
)

// span maps times within [from, to] to x.
type span struct {
	from, to time.Time
	left     float64
}

func (s span) x(t time.Time) float64 {
	if t.Before(s.from) {
		t = s.from
	}
	if t.After(s.to) {
		t = s.to
	}
	total := s.to.Sub(s.from)
	if total <= 0 {
		return s.left
	}
	return s.left + plotWidth*float64(t.Sub(s.from))/float64(total)
}

// newTimeline lays out n lanes over [from, to] with about five ticks,
// labelled by label.
func newTimeline(n int, from, to time.Time, label func(time.Time) string) (*timeline, span) {
	sp := span{from: from, to: to, left: labelWidth}
	tl := &timeline{Width: labelWidth + plotWidth + 24, Left: labelWidth, PlotWidth: plotWidth,
		AxisY: 4 + float64(n)*laneHeight + 12, TickEnd: 4 + float64(n)*laneHeight}
	tl.Height = tl.AxisY + 6
	for i := range 5 {
		at := from.Add(time.Duration(i) * to.Sub(from) / 4)
		tl.Ticks = append(tl.Ticks, tick{X: sp.x(at), Label: label(at)})
	}
	return tl, sp
}

// stepBar is the bar of step from start to end, if it has any width.
func stepBar(sp span, step engine.Step, start, end time.Time, title string) (bar, bool) {
	x0, x1 := sp.x(start), sp.x(end)
	if x1-x0 < 0.5 {
		if !end.After(start) || end.Before(sp.from) || start.After(sp.to) {
			return bar{}, false
		}
		x1 = x0 + 0.5 // a step too short to see is still there
	}
	b := bar{X: x0, W: x1 - x0, Class: "s-" + string(step), Title: title}
	if b.W > charWidth*float64(len(step))+6 {
		b.Text = string(step)
	}
	return b, true
}

// endMark is the mark of a task's end.
func endMark(sp span, e engine.Step, at time.Time, title string) (mark, bool) {
	if at.Before(sp.from) || at.After(sp.to) {
		return mark{}, false
	}
	return mark{X: sp.x(at), Class: "m-" + string(e), Title: title}, true
}

// vmTimeline draws each VM's steps over [from, to] from the events'
// recent history: what the page shows of the last minutes.
func vmTimeline(vms []string, history map[string][]engine.Event, from, to time.Time) *timeline {
	tl, sp := newTimeline(len(vms), from, to, func(t time.Time) string {
		if d := to.Sub(t).Round(time.Second); d > 0 {
			return "-" + shortDuration(d)
		}
		return "now"
	})
	for i, vm := range vms {
		ln := newLane(vm, i)
		h := history[vm]
		for j, e := range h {
			end := to
			if j+1 < len(h) {
				end = h[j+1].At
			}
			what := fmt.Sprintf("%s (%s, task %s)", e.Sample, e.Profile, e.Task)
			if e.Step.Final() {
				title := fmt.Sprintf("%s %s at %s", what, e.Step, e.At.Format("15:04:05"))
				if e.Detail != "" {
					title += ": " + e.Detail
				}
				if m, ok := endMark(sp, e.Step, e.At, title); ok {
					ln.mark(m)
				}
				continue
			}
			title := fmt.Sprintf("%s for %s from %s: %s", e.Step, shortDuration(end.Sub(e.At)), e.At.Format("15:04:05"), what)
			if b, ok := stepBar(sp, e.Step, e.At, end, title); ok {
				ln.add(b)
			}
		}
		tl.Lanes = append(tl.Lanes, ln)
	}
	return tl
}

// analysisLane is one analysis of a task: its transitions, until end for
// the last step of one still running.
type analysisLane struct {
	Label       string
	Transitions []engine.Transition
}

// taskTimeline draws a task's analyses from its submission to its end
// (or now).
func taskTimeline(lanes []analysisLane, from, to time.Time) *timeline {
	for _, l := range lanes {
		for _, t := range l.Transitions {
			if t.At.Before(from) {
				from = t.At
			}
			if t.At.After(to) {
				to = t.At
			}
		}
	}
	tl, sp := newTimeline(len(lanes), from, to, func(t time.Time) string {
		return "+" + shortDuration(t.Sub(from))
	})
	for i, l := range lanes {
		ln := newLane(l.Label, i)
		for j, t := range l.Transitions {
			if t.Step.Final() {
				title := fmt.Sprintf("%s at +%s", t.Step, shortDuration(t.At.Sub(from)))
				if t.Detail != "" {
					title += ": " + t.Detail
				}
				if m, ok := endMark(sp, t.Step, t.At, title); ok {
					ln.mark(m)
				}
				continue
			}
			end := to
			if j+1 < len(l.Transitions) {
				end = l.Transitions[j+1].At
			}
			title := fmt.Sprintf("%s for %s", t.Step, shortDuration(end.Sub(t.At)))
			if t.Detail != "" {
				title += ": " + t.Detail
			}
			if b, ok := stepBar(sp, t.Step, t.At, end, title); ok {
				ln.add(b)
			}
		}
		tl.Lanes = append(tl.Lanes, ln)
	}
	return tl
}

// shortDuration writes d for people: 350ms, 4.2s, 3m05s, 2h10m.
func shortDuration(d time.Duration) string {
	switch {
	case d < time.Second:
		return fmt.Sprintf("%dms", d.Milliseconds())
	case d < 10*time.Second:
		return fmt.Sprintf("%.1fs", d.Seconds())
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	}
	return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
}
