//go:build unix

package main_test

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/queue/pgtest"
)

// BenchmarkTakeover measures, with the default dead_after, the time from
// the SIGKILL of a host running an analysis to that analysis running again
// on another host sharing the PostgreSQL queue.
func BenchmarkTakeover(b *testing.B) {
	db := pgtest.Database(b)
	all := []string{"a1", "b1"}
	var took []time.Duration
	for b.Loop() {
		dirA, dirB := b.TempDir(), b.TempDir()
		for dir, conf := range map[string]string{
			dirA: serveConfig("host-a", []string{"a1"}, all, "60", ""),
			dirB: serveConfig("host-b", []string{"b1"}, all, "60", ""),
		} {
			// The default dead_after: the line the tests set is taken out.
			conf = strings.Replace(conf, "dead_after = \"3s\"\n", "", 1)
			require.NoError(b, os.WriteFile(filepath.Join(dir, "config.toml"), []byte(conf), 0o644))
		}
		a := startServe(b, dirA, "--database", db)
		id := a.submit("s.txt", "a sample")
		// Host B starts once host A has the task, so that host A runs it.
		waitFor(b, time.Minute, "the task running on host A", func() bool {
			task, ok := a.tryTask(id)
			return ok && len(task.Analyses) == 1 && task.Analyses[0].State == "running" && task.Analyses[0].Host == "host-a"
		})
		bs := startServe(b, dirB, "--database", db)
		a.kill()
		killed := time.Now()
		waitFor(b, 2*time.Minute, "the task running on host B", func() bool {
			task, ok := bs.tryTask(id)
			return ok && task.Analyses[0].State == "running" && task.Analyses[0].Host == "host-b"
		})
		took = append(took, time.Since(killed))
		bs.stop(syscall.SIGTERM, time.Minute)
	}
	b.ReportMetric(took[len(took)-1].Seconds(), "takeover-s")
}
