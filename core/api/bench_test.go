package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/config"
)

// BenchmarkSubmitLatency submits samples from 50 concurrent clients to the
// embedded (SQLite) queue and reports the latency from request to "queued"
// (the 202 answer) at p50 and p99, beside the same percentiles of a bare
// health check under the same load, measured in the same run.
func BenchmarkSubmitLatency(b *testing.B) {
	const clients, each = 50, 4
	s := newServiceTB(b)
	measure := func(do func(i int) error) []time.Duration {
		var mu sync.Mutex
		var lat []time.Duration
		var wg sync.WaitGroup
		for c := range clients {
			wg.Go(func() {
				for k := range each {
					begun := time.Now()
					err := do(c*each + k)
					d := time.Since(begun)
					require.NoError(b, err)
					mu.Lock()
					lat = append(lat, d)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		slices.Sort(lat)
		return lat
	}
	pct := func(lat []time.Duration, p float64) float64 {
		return float64(lat[int(p*float64(len(lat)-1))]) / float64(time.Millisecond)
	}
	var sub, health []time.Duration
	for b.Loop() {
		health = measure(func(int) error {
			resp, err := http.Get(s.url + "/healthz")
			if err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			return err
		})
		sub = measure(func(i int) error {
			body, ct := form(b, fmt.Sprintf("s%d.bin", i), fmt.Appendf(nil, "sample %d %d", i, time.Now().UnixNano()), "profile", "clamav")
			req, _ := http.NewRequest("POST", s.url+"/v1/tasks", body)
			req.Header.Set("Authorization", "Bearer "+token)
			req.Header.Set("Content-Type", ct)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusAccepted {
				return fmt.Errorf("status %d", resp.StatusCode)
			}
			return nil
		})
	}
	b.ReportMetric(pct(sub, .5), "submit-p50-ms")
	b.ReportMetric(pct(sub, .99), "submit-p99-ms")
	b.ReportMetric(pct(health, .5), "health-p50-ms")
	b.ReportMetric(pct(health, .99), "health-p99-ms")
}

// BenchmarkPageRender draws the status page of a service whose database
// holds 1,000 tasks that ran on 8 VMs (their event history with them),
// each task's output 64 KiB that the page must not read. It reports the
// time per page and fails if drawing it reached the hypervisor.
func BenchmarkPageRender(b *testing.B) {
	const vms, tasks = 8, 1000
	journal := filepath.Join(b.TempDir(), "journal.jsonl")
	var world strings.Builder
	fmt.Fprintf(&world, "[plugins.fake.config]\njournal = %q\n[plugins.fake.config.timing]\nstart = \"1ms\"\nacpi_shutdown = \"1ms\"\n"+
		"poweroff = \"1ms\"\nrestore = \"1ms\"\nunlock_after_stop = \"1ms\"\nguest_ready = \"1ms\"\n", journal)
	var names []string
	for i := range vms {
		names = append(names, fmt.Sprintf("vm%d", i))
		fmt.Fprintf(&world, "[plugins.fake.config.vms.vm%d]\nsnapshots = [\"clean\"]\n", i)
	}
	// The fake guest's echo prints its arguments: a 64 KiB argument makes
	// every result carry 64 KiB of output.
	noisy := config.NewProfile("noisy", names[:vms/2], "/s/{sha256}", "echo", strings.Repeat("x", 64<<10))
	quick := config.NewProfile("quick", names[vms/2:], "/s/{sha256}", "scan", "{sample}")
	s := newServiceTB(b, func(o *serviceOptions) {
		o.world, o.vms, o.profiles = world.String(), names, []config.Profile{noisy, quick}
		o.server = func(c *config.Server) { c.MaxUploads = 64 }
	})
	var ids []string
	var mu sync.Mutex
	var wg sync.WaitGroup
	for c := range 8 {
		wg.Go(func() {
			for i := c; i < tasks; i += 8 {
				body, ct := form(b, fmt.Sprintf("s%d.bin", i), fmt.Appendf(nil, "sample %d", i))
				req, _ := http.NewRequest("POST", s.url+"/v1/tasks", body)
				req.Header.Set("Authorization", "Bearer "+token)
				req.Header.Set("Content-Type", ct)
				resp, err := http.DefaultClient.Do(req)
				require.NoError(b, err)
				var t struct{ ID string }
				require.NoError(b, json.NewDecoder(resp.Body).Decode(&t))
				resp.Body.Close()
				mu.Lock()
				ids = append(ids, t.ID)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	ctx := context.Background()
	deadline := time.Now().Add(10 * time.Minute)
	for {
		counts, err := s.queue.Counts(ctx)
		require.NoError(b, err)
		if counts["done"]+counts["failed"] == tasks {
			break
		}
		require.True(b, time.Now().Before(deadline), "the tasks did not end: %v", counts)
		time.Sleep(200 * time.Millisecond) // waiting for the fixture
	}
	lines := func() int {
		data, err := os.ReadFile(journal)
		require.NoError(b, err)
		return strings.Count(string(data), "\n")
	}
	time.Sleep(200 * time.Millisecond) // the last cleanups' status reads land in the journal
	before := lines()
	h := s.srv.Handler()
	size := 0
	for b.Loop() {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest("GET", "/", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			b.Fatalf("the page answered %d: %s", rec.Code, rec.Body)
		}
		size = rec.Body.Len()
	}
	if calls := lines() - before; calls != 0 {
		b.Fatalf("drawing the page made %d hypervisor calls", calls)
	}
	b.ReportMetric(float64(size)/1024, "page-KiB")
}

// BenchmarkUploadAgainstCp uploads one 500 MB sample through the API, to
// the embedded SQLite queue, and copies the same file with cp on the same
// disk in the same run: it reports both rates and their ratio.
func BenchmarkUploadAgainstCp(b *testing.B) {
	const size = 500 << 20
	dir := b.TempDir()
	src := filepath.Join(dir, "sample.bin")
	f, err := os.Create(src)
	require.NoError(b, err)
	_, err = io.Copy(f, io.LimitReader(rand.NewChaCha8([32]byte{1}), size))
	require.NoError(b, err)
	require.NoError(b, f.Close())
	s := newServiceTB(b, func(o *serviceOptions) {
		o.server = func(c *config.Server) { c.MaxSampleSize = config.MaxSampleSizeLimit }
	})
	var upload, cp time.Duration
	for b.Loop() {
		dst := filepath.Join(dir, "copy.bin")
		begun := time.Now()
		out, err := exec.Command("cp", src, dst).CombinedOutput()
		require.NoError(b, err, string(out))
		cp += time.Since(begun)
		require.NoError(b, os.Remove(dst))

		pr, pw := io.Pipe()
		w := multipart.NewWriter(pw)
		go func() {
			fw, err := w.CreateFormFile("file", "sample.bin")
			if err == nil {
				var in *os.File
				if in, err = os.Open(src); err == nil {
					_, err = io.Copy(fw, in)
					in.Close()
				}
			}
			if err == nil {
				err = w.Close()
			}
			pw.CloseWithError(err)
		}()
		req, _ := http.NewRequest("POST", s.url+"/v1/tasks", pr)
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", w.FormDataContentType())
		begun = time.Now()
		resp, err := http.DefaultClient.Do(req)
		require.NoError(b, err)
		var t struct{ ID string }
		require.NoError(b, json.NewDecoder(resp.Body).Decode(&t))
		resp.Body.Close()
		upload += time.Since(begun)
		require.Equal(b, http.StatusAccepted, resp.StatusCode)
		// Its analysis would copy 500 MB into a fake guest: not measured.
		req, _ = http.NewRequest("POST", s.url+"/v1/tasks/"+t.ID+"/cancel", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}
	mb := float64(size) / (1 << 20) * float64(b.N)
	b.ReportMetric(mb/upload.Seconds(), "upload-MB/s")
	b.ReportMetric(mb/cp.Seconds(), "cp-MB/s")
	b.ReportMetric(upload.Seconds()/cp.Seconds(), "upload/cp")
}
