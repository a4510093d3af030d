package queue

import (
	"context"
	"errors"
	"time"
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
