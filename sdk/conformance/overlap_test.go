package conformance

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// Two restores at once are taken for one waiting on the other only when
// their total is about the sum alone and one of them was not slowed: what
// a lock shows, and sharing a CPU or a disk does not.
func TestOneWaitedTellsALockFromASharedResource(t *testing.T) {
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	for _, tc := range []struct {
		name        string
		alone, done [2]time.Duration
		all         time.Duration
		waited      bool
	}{
		{"overlapping", [2]time.Duration{ms(200), ms(200)}, [2]time.Duration{ms(205), ms(210)}, ms(210), false},
		{"a lock, the first VM first", [2]time.Duration{ms(200), ms(200)}, [2]time.Duration{ms(205), ms(405)}, ms(405), true},
		{"a lock, the second VM first", [2]time.Duration{ms(350), ms(310)}, [2]time.Duration{ms(665), ms(312)}, ms(665), true},
		// QEMU's restores in CI's make test: both slowed, neither waited.
		{"a shared disk", [2]time.Duration{ms(351), ms(310)}, [2]time.Duration{ms(598), ms(580)}, ms(598), false},
		{"one held back a while", [2]time.Duration{ms(200), ms(200)}, [2]time.Duration{ms(290), ms(330)}, ms(330), false},
	} {
		assert.Equal(t, tc.waited, oneWaited(tc.alone, tc.done, tc.all), tc.name)
	}
}
