package queue

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/sandboxhq/sandbox/core/engine"
)

// Kill makes the queue's host die as a SIGKILLed process would, as far as
// the others can tell: no heartbeat, no sweep, nothing recorded, its jobs
// left running in the database.
func (q *Queue) Kill() {
	q.db.mu.Lock()
	q.db.lost = errors.New("the host was killed")
	q.db.mu.Unlock()
	if q.background != nil {
		q.background()
	}
	q.db.DB.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	go func() {
		defer cancel()
		_ = q.client.StopAndCancel(ctx)
	}()
}

// Pool is the queue's pool, for tests that watch its events.
func (q *Queue) Pool() *engine.Pool { return q.pool }

// DieBeforeClaim makes the queue's host die, as Kill does, as its next job
// begins and before the job claims its analysis.
func (q *Queue) DieBeforeClaim() {
	var once sync.Once
	q.beforeClaim = func() {
		once.Do(q.Kill)
		select {} // the process is gone: the job never goes on
	}
}

// SweepEndedTasks runs the sweep's ending of tasks whose analyses all
// ended, as the sweep does on its own every few seconds.
func (q *Queue) SweepEndedTasks(ctx context.Context) error { return q.sweepEndedTasks(ctx) }
