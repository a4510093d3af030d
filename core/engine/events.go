package engine

import (
	"maps"
	"slices"
	"sync"
	"time"
)

// Event is one transition of one task, as it happens: what a live view
// shows, what metrics count and what the service's VM status reads.
type Event struct {
	// Task identifies the task among those of its front door (a service
	// task's id, a run's sample and profile).
	Task string `json:"task"`
	// Sample is the sample's file name and SHA256 its digest.
	Sample string `json:"sample"`
	SHA256 string `json:"sha256"`
	// Profile names the task's analysis.
	Profile string `json:"profile"`
	// VM is the VM the task runs on; empty while it waits for one.
	VM string `json:"vm,omitempty"`
	// Step is the step entered, At when.
	Step Step      `json:"step"`
	At   time.Time `json:"at"`
	// Detail says more where there is more to say (why a step failed).
	Detail string `json:"detail,omitempty"`
	// Previous is the step the task left, and Took how long it was in it;
	// empty for a task's first event.
	Previous Step          `json:"previous,omitempty"`
	Took     time.Duration `json:"took_ns,omitempty"`
}

// Events is the one stream of task transitions: the engine publishes each
// transition once, and every observer (the CLI's live view, the metrics,
// the service's VM status and page) subscribes to it or reads the latest
// event of each VM from it. A nil *Events discards.
type Events struct {
	mu     sync.Mutex
	next   int
	subs   map[int]func(Event)
	latest map[string]Event
	// recent is each VM's events of about the last HistoryWindow, oldest
	// first, at most HistoryLimit of them.
	recent map[string][]Event
}

// The recent history kept of each VM, for a picture of its last minutes:
// the events of the last HistoryWindow (and the one before them, which
// says what the VM was doing when the window began), at most HistoryLimit.
const (
	HistoryWindow = 15 * time.Minute
	HistoryLimit  = 512
)

// NewEvents returns an empty stream.
func NewEvents() *Events {
	return &Events{subs: map[int]func(Event){}, latest: map[string]Event{}, recent: map[string][]Event{}}
}

// Subscribe calls fn with every event from now on, in order, on the
// publishing task's goroutine: fn must return quickly and must not
// publish. The returned function ends the subscription.
func (s *Events) Subscribe(fn func(Event)) (cancel func()) {
	if s == nil {
		return func() {}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	id := s.next
	s.next++
	s.subs[id] = fn
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.subs, id)
	}
}

// Publish records e as its VM's latest and tells every subscriber.
// Subscribers see events in the order they were published.
func (s *Events) Publish(e Event) {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if e.VM != "" {
		s.latest[e.VM] = e
		s.recent[e.VM] = trim(append(s.recent[e.VM], e), e.At.Add(-HistoryWindow))
	}
	for _, fn := range s.subs {
		fn(e)
	}
}

// Latest returns the last event of each VM that has had one.
func (s *Events) Latest() map[string]Event {
	if s == nil {
		return map[string]Event{}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.latest)
}

// trim drops the events past HistoryLimit and those before since, except
// the last one before since.
func trim(h []Event, since time.Time) []Event {
	drop := max(0, len(h)-HistoryLimit)
	for drop+1 < len(h) && h[drop+1].At.Before(since) {
		drop++
	}
	if drop == 0 {
		return h
	}
	// Copied down rather than resliced, so that the array does not grow
	// without bound behind the slice.
	n := copy(h, h[drop:])
	clear(h[n:])
	return h[:n]
}

// History returns each VM's events since the given time, oldest first,
// with the last event before it (what the VM was doing then) when the
// stream still has it.
func (s *Events) History(since time.Time) map[string][]Event {
	out := map[string][]Event{}
	if s == nil {
		return out
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for vm, h := range s.recent {
		i := 0
		for i+1 < len(h) && h[i+1].At.Before(since) {
			i++
		}
		out[vm] = slices.Clone(h[i:])
	}
	return out
}
