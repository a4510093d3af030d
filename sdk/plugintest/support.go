package plugintest

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"
)

// Buffer is an io.Writer that many goroutines may write to while a test
// reads it: a plugin's log, a command's output.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Context returns a context that ends after d or when the test ends,
// whichever comes first: every call a test makes is bounded.
func Context(t testing.TB, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// GoneWithin waits up to d for the process to exit (see Gone): a process
// being killed by someone else, which nothing lets a test wait on.
func GoneWithin(pid int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for !Gone(pid) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}
