package conformance

import (
	"context"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// envTimedRun has TestGoTestTimesEachCheckItself run its checks instead of
// looking at the times go test gave them.
const envTimedRun = "SANDBOX_CONFORMANCE_TIMED_RUN"

// go test's time for a check's subtest is the check's own, whatever ran
// beside it: here a quick check on the VM and a slow one on none begin
// together, and the slow one, later in suite order, must not be shown as
// only the part of it that outlasted the quick one.
func TestGoTestTimesEachCheckItself(t *testing.T) {
	const quick, slow = 200 * time.Millisecond, 600 * time.Millisecond
	if os.Getenv(envTimedRun) != "" {
		s, err := open(context.Background(), stubTarget())
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, s.finish()) })
		s.runSubtests(t, []*check{
			{name: "Timed/Quick", clause: "§1.1", fn: func(*probe) { time.Sleep(quick) }},
			{name: "Timed/Slow", clause: "§1.1", free: true, fn: func(*probe) { time.Sleep(slow) }},
		})
		return
	}
	if testing.Short() {
		t.Skip("runs the test binary again")
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^"+t.Name()+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), envTimedRun+"=1")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	shown := func(check string) time.Duration {
		m := regexp.MustCompile(`--- PASS: ` + regexp.QuoteMeta(t.Name()+"/"+check) + ` \((\d+\.\d+)s\)`).FindSubmatch(out)
		require.NotNil(t, m, "no result line for %s in:\n%s", check, out)
		secs, err := strconv.ParseFloat(string(m[1]), 64)
		require.NoError(t, err)
		return time.Duration(secs * float64(time.Second))
	}
	// go test rounds to 10ms; a busy machine only makes a check longer.
	assert.GreaterOrEqual(t, shown("Timed/Quick"), quick-10*time.Millisecond, "%s", out)
	assert.GreaterOrEqual(t, shown("Timed/Slow"), slow-10*time.Millisecond, "%s", out)
}
