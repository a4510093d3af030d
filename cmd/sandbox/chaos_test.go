//go:build unix

package main_test

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/queue/pgtest"
	"github.com/sandboxhq/sandbox/plugins/fake"
)

// TestChaos tries to break the service's promise, that every accepted task
// ends exactly once, as a bad day would: three `sandbox serve` processes
// share one PostgreSQL, each with VMs of its own of one profile; tasks are
// submitted; a random host is SIGKILLed every few seconds and started
// again a little later; PostgreSQL goes away once. At the end every task
// has ended done with one result (by the database) and has its report (by
// the files), no analysis ran to completion twice without its first
// attempt being recorded as lost (by the fake hypervisors' journals), and
// every VM is off, unlocked, clean and leased by nobody.
//
// The short form runs in `make test`; SANDBOX_SOAK=1 (`make soak`) runs the
// long one: 300 tasks, a kill every 10 to 20 s, PostgreSQL away for 10 s.
func TestChaos(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("the chaos test runs three services for a minute; -short skips it")
	}
	tasks, killEvery, dbDown, within := 40, [2]time.Duration{3 * time.Second, 6 * time.Second}, 5*time.Second, 4*time.Minute
	if os.Getenv("SANDBOX_SOAK") != "" {
		tasks, killEvery, dbDown, within = 300, [2]time.Duration{10 * time.Second, 20 * time.Second}, 10*time.Second, 30*time.Minute
	}
	proxy := pgtest.NewProxy(t, pgtest.Database(t))
	names := []string{"host-a", "host-b", "host-c"}
	var all []string
	vmsOf := map[string][]string{}
	for _, h := range names {
		for i := range 2 {
			vm := fmt.Sprintf("%s-vm%d", strings.TrimPrefix(h, "host-"), i+1)
			vmsOf[h] = append(vmsOf[h], vm)
			all = append(all, vm)
		}
	}
	dirs := map[string]string{}
	for _, h := range names {
		dirs[h] = t.TempDir()
		conf := serveConfig(h, vmsOf[h], all, "1", "")
		require.NoError(t, os.WriteFile(filepath.Join(dirs[h], "config.toml"), []byte(conf), 0o644))
	}

	var mu sync.Mutex
	hosts := map[string]*server{}
	startHost := func(h string) {
		s := startServe(t, dirs[h], "--database", proxy.URL)
		mu.Lock()
		hosts[h] = s
		mu.Unlock()
	}
	alive := func() *server {
		mu.Lock()
		defer mu.Unlock()
		for _, h := range names {
			if s := hosts[h]; s != nil {
				return s
			}
		}
		return nil
	}
	for _, h := range names {
		startHost(h)
	}

	// Submit, on whichever host answers.
	ids := map[string]string{} // task id -> sample content's name
	for i := range tasks {
		name := fmt.Sprintf("s%03d.txt", i)
		ids[alive().submit(name, "chaos sample "+name)] = name
	}

	// The chaos: kills and restarts, and the database away once, until
	// every task has ended.
	stop := make(chan struct{})
	chaosDone := make(chan struct{})
	kills := 0
	go func() {
		defer close(chaosDone)
		dbWentDown := false
		for {
			d := killEvery[0] + time.Duration(rand.Int64N(int64(killEvery[1]-killEvery[0])))
			select {
			case <-stop:
				return
			case <-time.After(d):
			}
			h := names[rand.IntN(len(names))]
			mu.Lock()
			s := hosts[h]
			hosts[h] = nil
			mu.Unlock()
			if s == nil {
				continue
			}
			s.kill()
			kills++
			if !dbWentDown {
				dbWentDown = true
				proxy.Down(dbDown)
			} else {
				time.Sleep(time.Second + time.Duration(rand.Int64N(int64(2*time.Second))))
			}
			startHost(h)
		}
	}()
	deadline := time.Now().Add(within)
	var ended map[string]serveTask
	for {
		ended = map[string]serveTask{}
		if s := alive(); s != nil {
			for id := range ids {
				if task, ok := s.tryTask(id); ok && task.Final() {
					ended[id] = task
				}
			}
		}
		if len(ended) == len(ids) {
			break
		}
		if time.Now().After(deadline) {
			for id := range ids {
				if _, ok := ended[id]; ok {
					continue
				}
				if s := alive(); s != nil {
					task, _ := s.tryTask(id)
					t.Logf("task %s did not end: %s, analyses %+v", id, task.State, task.Analyses)
				}
				for _, h := range names {
					mu.Lock()
					hs := hosts[h]
					mu.Unlock()
					if hs == nil {
						continue
					}
					for _, line := range strings.Split(hs.logs(), "\n") {
						if strings.Contains(line, id) || strings.Contains(line, "ERROR") || strings.Contains(line, "WARN") {
							t.Logf("%s: %s", h, line)
						}
					}
				}
			}
			t.Fatalf("%d of %d tasks ended within %s", len(ended), len(ids), within)
		}
		time.Sleep(time.Second)
	}
	close(stop)
	<-chaosDone
	t.Logf("%d tasks ended through %d kills and the database away for %s", len(ids), kills, dbDown)

	// Exactly once, by the database.
	lost := map[string]int{}
	for id, task := range ended {
		assert.Equal(t, "done", task.State, "task %s", id)
		require.Len(t, task.Results, 1, "task %s: one result per profile, exactly", id)
		require.Len(t, task.Analyses, 1)
		lost[task.Sample.SHA256] = len(task.Analyses[0].Lost)
	}
	// By the files: every task has its report, on some host.
	reports := map[string]bool{}
	for _, h := range names {
		matches, err := filepath.Glob(filepath.Join(dirs[h], "results", "*", "*", "report.json"))
		require.NoError(t, err)
		for _, m := range matches {
			id := filepath.Base(filepath.Dir(m))
			_, ok := ended[id]
			assert.True(t, ok, "a report for %s, which is no task that ended", id)
			reports[id] = true
		}
	}
	assert.Len(t, reports, len(ids), "every task has its report")

	// By the hypervisors: an analysis ran to completion once, or once more
	// for each attempt it says it lost.
	runs := map[string]int{}
	for _, h := range names {
		entries, err := fake.ReadJournal(filepath.Join(dirs[h], "journal.jsonl"))
		require.NoError(t, err)
		copied := map[string]string{} // VM -> sample in its guest
		for _, e := range entries {
			switch {
			case e.Op == "copy-in" && e.Outcome == "ok":
				copied[e.VM] = strings.TrimPrefix(e.Path, "/s/")
			case e.Op == "exec" && e.Outcome == "ok" && len(e.Command) > 0 && e.Command[0] == "sleep":
				runs[copied[e.VM]]++
			}
		}
	}
	for sha, n := range runs {
		assert.LessOrEqual(t, n, 1+lost[sha], "sample %s ran to completion %d times, with %d attempts recorded lost", sha, n, lost[sha])
	}

	// Every VM clean and free, the services stopped.
	for _, h := range names {
		mu.Lock()
		s := hosts[h]
		mu.Unlock()
		if s != nil {
			assert.Equal(t, 0, s.stop(syscall.SIGTERM, time.Minute), h)
		}
		vmsClean(t, dirs[h], vmsOf[h]...)
		r := sandboxRaw(t, dirs[h], "--json", "vm", "list")
		require.Equal(t, 0, r.code, r.stderr)
		var list struct {
			VMs []struct {
				Name  string
				Lease any `json:"lease"`
			} `json:"vms"`
		}
		require.NoError(t, json.Unmarshal([]byte(r.stdout), &list), r.stdout)
		for _, vm := range list.VMs {
			assert.Nil(t, vm.Lease, "%s of %s is leased by nobody", vm.Name, h)
		}
	}
}

// tryTask reads a task, or says it could not (the host is being killed).
func (s *server) tryTask(id string) (serveTask, bool) {
	req, err := http.NewRequest("GET", s.url+"/v1/tasks/"+id, nil)
	if err != nil {
		return serveTask{}, false
	}
	req.Header.Set("Authorization", "Bearer "+apiToken)
	resp, err := s.client.Do(req)
	if err != nil {
		return serveTask{}, false
	}
	defer resp.Body.Close()
	var t serveTask
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&t) != nil {
		return serveTask{}, false
	}
	return t, true
}
