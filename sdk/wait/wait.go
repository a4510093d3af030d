// Package wait is the deadline toolkit of sandbox drivers and of the core:
// retrying a call that may succeed later (Retry), waiting until a
// condition holds (Until, Sleep), and per-key locks whose Lock gives up
// when its context ends (Keyed).
//
// Every wait here is bounded by a context, and none sleeps past its
// deadline. A retry reports the last error of the call it repeated, not
// the context's: "the session is locked by another process" tells an
// operator what to do, "context deadline exceeded" does not.
//
// It imports nothing of sandbox's, so that any driver and any package of
// the core can use it.
package wait

import (
	"context"
	"errors"
	"math"
	"time"

	"github.com/cenkalti/backoff/v5"
)

// Policy is how long to wait between two tries: Initial, then Factor
// times longer each time, never longer than Max, each wait moved at random
// by up to Jitter of itself so that many waiters do not try in step.
type Policy struct {
	// Initial is the first wait.
	Initial time.Duration
	// Max caps one wait; zero means no cap.
	Max time.Duration
	// Factor is how much longer each wait is than the one before; 1 (or
	// less) keeps the wait at Initial.
	Factor float64
	// Jitter is the fraction, from 0 to 1, by which a wait may be shorter
	// or longer at random; 0 waits exactly.
	Jitter float64
}

// lastTry is how long before a context's deadline a retry or a wait tries
// one last time rather than sleep past it.
const lastTry = 10 * time.Millisecond

// Backoff is the sequence of waits of a policy.
type Backoff struct{ b backoff.ExponentialBackOff }

// Backoff starts the policy's sequence of waits.
func (p Policy) Backoff() *Backoff {
	f := p.Factor
	if f < 1 {
		f = 1
	}
	maxWait := p.Max
	if maxWait <= 0 {
		maxWait = math.MaxInt64 / 4
	}
	b := &Backoff{b: backoff.ExponentialBackOff{
		InitialInterval:     max(p.Initial, 0),
		RandomizationFactor: min(max(p.Jitter, 0), 1),
		Multiplier:          f,
		MaxInterval:         maxWait,
	}}
	b.b.Reset()
	return b
}

// Next returns the next wait.
func (b *Backoff) Next() time.Duration { return b.b.NextBackOff() }

// next is the wait before the next try within ctx, and whether that try
// is the last: when the policy's wait would end past ctx's deadline, the
// last try comes just before the deadline instead.
func (b *Backoff) next(ctx context.Context) (time.Duration, bool) {
	d := b.Next()
	if deadline, ok := ctx.Deadline(); ok {
		if left := time.Until(deadline); left < d+lastTry {
			return max(left-lastTry, 0), true
		}
	}
	return d, false
}

// Retry calls f until it succeeds, fails with an error retryable rejects,
// or ctx ends, waiting between calls as p says; a nil retryable retries
// every error. f is called at least once, with ctx. When the next wait
// would pass ctx's deadline, Retry makes one last call just before it
// rather than give up early.
//
// It returns the number of calls and the last error of f, not ctx's, so
// that the caller can tell the operator what the hypervisor last said: a
// call that ctx's end cut short (its error is ctx's) gives way to the
// error of the call before it. It is for f to answer promptly once ctx has
// ended.
func Retry(ctx context.Context, p Policy, retryable func(error) bool, f func(context.Context) error) (int, error) {
	b := p.Backoff()
	var t timer
	defer t.stop()
	var prev error
	call := func() error {
		err := f(ctx)
		if err != nil && prev != nil && ctx.Err() != nil &&
			(errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)) {
			return prev
		}
		prev = err
		return err
	}
	for calls := 1; ; calls++ {
		err := call()
		if err == nil || (retryable != nil && !retryable(err)) || ctx.Err() != nil {
			return calls, err
		}
		d, last := b.next(ctx)
		if !t.sleep(ctx, d) {
			return calls, err
		}
		if last {
			return calls + 1, call()
		}
	}
}

// Until calls cond until it reports true or fails, waiting between calls
// as p says, and makes one last call just before ctx's deadline. It
// returns nil once cond holds, cond's error when it fails, and ctx's
// error when ctx ends first. A condition that should outlast a failed
// read (a status poll while a plugin relaunches) returns false, nil and
// keeps the error itself.
func Until(ctx context.Context, p Policy, cond func(context.Context) (bool, error)) error {
	b := p.Backoff()
	var t timer
	defer t.stop()
	for {
		ok, err := cond(ctx)
		switch {
		case err != nil:
			return err
		case ok:
			return nil
		case ctx.Err() != nil:
			return ctx.Err()
		}
		d, last := b.next(ctx)
		if !t.sleep(ctx, d) {
			return ctx.Err()
		}
		if last {
			if ok, err := cond(ctx); err != nil || ok {
				return err
			}
			<-ctx.Done()
			return ctx.Err()
		}
	}
}

// Next says when a condition that did not hold may hold: once Wake fires
// (a channel closed on every change of what the condition reads), or at
// At, whichever comes first. A nil Wake never fires; a zero At never comes.
type Next struct {
	Wake <-chan struct{}
	At   time.Time
}

// On calls look until it reports true or fails, or ctx ends, waiting
// between calls as look's Next says. It is Until for a condition whose
// changes are announced: it looks again as soon as one may have made it
// hold, never later, and polls for nothing. It returns nil once look
// holds, look's error when it fails, and ctx's error when ctx ends first.
func On(ctx context.Context, look func(context.Context) (bool, Next, error)) error {
	var t timer
	defer t.stop()
	for {
		ok, next, err := look(ctx)
		switch {
		case err != nil:
			return err
		case ok:
			return nil
		case ctx.Err() != nil:
			return ctx.Err()
		}
		var due <-chan time.Time
		if !next.At.IsZero() {
			due = t.after(max(time.Until(next.At), 0))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-next.Wake:
		case <-due:
		}
	}
}

// Sleep waits d, or until ctx ends; it returns ctx's error in that case.
func Sleep(ctx context.Context, d time.Duration) error {
	var t timer
	defer t.stop()
	if !t.sleep(ctx, d) {
		return ctx.Err()
	}
	return nil
}

// timer is one time.Timer reused by the waits of a loop, made on first
// use.
type timer struct{ t *time.Timer }

// after arms the timer for d and returns its channel.
func (t *timer) after(d time.Duration) <-chan time.Time {
	if t.t == nil {
		t.t = time.NewTimer(d)
	} else {
		t.t.Reset(d)
	}
	return t.t.C
}

// sleep waits d and reports false when ctx ended first.
func (t *timer) sleep(ctx context.Context, d time.Duration) bool {
	if ctx.Err() != nil {
		return false
	}
	if d <= 0 {
		return true
	}
	select {
	case <-t.after(d):
		return true
	case <-ctx.Done():
		return false
	}
}

func (t *timer) stop() {
	if t.t != nil {
		t.t.Stop()
	}
}
