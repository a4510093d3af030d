//go:build linux

package main_test

import (
	"encoding/binary"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// sampleStream is n bytes of a sample that differs for each seed, made as
// it is read: the test holds none of it.
type sampleStream struct {
	seed, left int64
	block      [64 << 10]byte
	at         int
}

func newSampleStream(seed, n int64) *sampleStream {
	s := &sampleStream{seed: seed, left: n, at: len(sampleStream{}.block)}
	return s
}

func (s *sampleStream) Read(p []byte) (int, error) {
	if s.left == 0 {
		return 0, io.EOF
	}
	if s.at == len(s.block) {
		// Each block differs: the seed and the block's number, repeated.
		for i := 0; i+16 <= len(s.block); i += 16 {
			binary.LittleEndian.PutUint64(s.block[i:], uint64(s.seed))
			binary.LittleEndian.PutUint64(s.block[i+8:], uint64(s.left))
		}
		s.at = 0
	}
	n := copy(p, s.block[s.at:])
	n = int(min(int64(n), s.left))
	s.at += n
	s.left -= int64(n)
	return n, nil
}

// upload posts a sample of size bytes made by newSampleStream(seed, size),
// streamed as the form is written, and returns the answer's status.
func (s *server) upload(seed, size int64) (int, string) {
	pr, pw := io.Pipe()
	w := multipart.NewWriter(pw)
	go func() {
		err := w.WriteField("profile", "scan")
		if err == nil {
			var fw io.Writer
			if fw, err = w.CreateFormFile("file", fmt.Sprintf("big-%d.bin", seed)); err == nil {
				if _, err = io.Copy(fw, newSampleStream(seed, size)); err == nil {
					err = w.Close()
				}
			}
		}
		pw.CloseWithError(err)
	}()
	req, err := http.NewRequest("POST", s.url+"/v1/tasks", pr)
	if err != nil {
		return 0, err.Error()
	}
	req.Header.Set("Authorization", "Bearer "+apiToken)
	req.Header.Set("Content-Type", w.FormDataContentType())
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// peakRSS is a process's peak resident memory, in bytes, from
// /proc/PID/status.
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	require.NoError(t, err)
	for line := range strings.Lines(string(data)) {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			require.NoError(t, err)
			return kb << 10
		}
	}
	t.Fatal("no VmHWM in /proc/PID/status")
	return 0
}

// Samples are streamed, never whole in memory: sixteen 60 MB uploads at
// once keep the service's peak resident memory under 150 MB, and every
// one of them is accepted and analysed.
func TestUploadsAreStreamedNotHeldInMemory(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("load test skipped: -short (make test-short) leaves out a gigabyte of uploads")
	}
	const uploads, size = 16, 60 << 20
	dir := t.TempDir()
	conf := serveConfig("solo", []string{"vm1"}, []string{"vm1"}, "0", "[server]\nmax_uploads = 16\nupload_timeout = \"10m\"\n")
	require.NoError(t, os.WriteFile(filepath.Join(dir, "config.toml"), []byte(conf), 0o644))
	s := startServe(t, dir)
	before := peakRSS(t, s.cmd.Process.Pid)

	begun := time.Now()
	var wg sync.WaitGroup
	statuses := make([]int, uploads)
	bodies := make([]string, uploads)
	for i := range uploads {
		wg.Go(func() { statuses[i], bodies[i] = s.upload(int64(i), size) })
	}
	wg.Wait()
	took := time.Since(begun)
	peak := peakRSS(t, s.cmd.Process.Pid)
	for i := range uploads {
		require.Equal(t, http.StatusAccepted, statuses[i], "%s\nthe service's log:\n%s", bodies[i], s.logs())
	}
	t.Logf("%d uploads of %d MB in %s: the service's peak RSS %d MB (%d MB before them)", uploads, size>>20, took.Round(time.Millisecond),
		peak>>20, before>>20)
	assert.Less(t, peak, int64(150<<20), "the service's peak resident memory")
	var list struct{ Tasks []struct{ ID string } }
	require.Equal(t, http.StatusOK, s.api("GET", "/v1/tasks?limit=100", nil, "", &list))
	assert.Len(t, list.Tasks, uploads)
}
