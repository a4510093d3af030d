package lifecycle

import (
	"context"
	"sync"
	"time"
)

// Quarantine remembers VMs taken out of service by a failed cleanup. The
// core marks a VM when a cleanup fails and clears it when a cleanup
// succeeds; the analysis engine asks before it uses a VM. Implementations
// that several processes share must make each call atomic across them.
type Quarantine interface {
	// Mark quarantines key with a reason; marking again keeps the first time.
	Mark(ctx context.Context, key, reason string) error
	// Clear lifts the quarantine of key; clearing a VM in service is a no-op.
	Clear(ctx context.Context, key string) error
	// Get returns key's entry and whether it is quarantined.
	Get(ctx context.Context, key string) (QuarantineEntry, bool, error)
}

// QuarantineEntry is one quarantined VM.
type QuarantineEntry struct {
	// Reason is the failure that caused it.
	Reason string `json:"reason"`
	// Since is when the VM was first quarantined.
	Since time.Time `json:"since"`
}

// MemoryQuarantine keeps the quarantine in memory, for one process.
type MemoryQuarantine struct {
	mu      sync.Mutex
	entries map[string]QuarantineEntry
}

// NewMemoryQuarantine returns an empty in-memory quarantine.
func NewMemoryQuarantine() *MemoryQuarantine {
	return &MemoryQuarantine{entries: map[string]QuarantineEntry{}}
}

// Mark implements Quarantine.
func (q *MemoryQuarantine) Mark(_ context.Context, key, reason string) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if e, ok := q.entries[key]; ok {
		e.Reason = reason
		q.entries[key] = e
		return nil
	}
	q.entries[key] = QuarantineEntry{Reason: reason, Since: time.Now()}
	return nil
}

// Clear implements Quarantine.
func (q *MemoryQuarantine) Clear(_ context.Context, key string) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.entries, key)
	return nil
}

// Get implements Quarantine.
func (q *MemoryQuarantine) Get(_ context.Context, key string) (QuarantineEntry, bool, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	e, ok := q.entries[key]
	return e, ok, nil
}
