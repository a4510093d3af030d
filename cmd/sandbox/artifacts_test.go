//go:build unix

package main_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/queue/pgtest"
)

// collectProfile runs only on host B's VM b1 and brings back two
// artifacts: the scanner's log and the sample as the guest had it.
const collectProfile = `[profiles.collect]
vms = ["b1"]
sample_path = "/s/sample.bin"
command = ["scan", "-o", "/s/log", "/s/sample.bin"]
artifacts = ["/s/log", "/s/sample.bin"]
timeout = "10s"
ready_timeout = "5s"
copy_timeout = "5s"
[profiles.collect.verdict]
malicious_exit_codes = [1]
`

// get calls the service with the token and returns the status and body.
func (s *server) get(path string) (int, []byte) {
	s.t.Helper()
	req, err := http.NewRequest("GET", s.url+path, nil)
	require.NoError(s.t, err)
	req.Header.Set("Authorization", "Bearer "+apiToken)
	resp, err := s.client.Do(req)
	require.NoError(s.t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(s.t, err)
	return resp.StatusCode, data
}

// An artifact of a task run on host B is downloaded through host A: the
// two hosts share a PostgreSQL queue, and the artifact is in it. One
// larger than host B's artifact_limit stays on B's disk: host A says so
// and names B, and B serves it.
func TestAnArtifactOfHostBDownloadedThroughHostA(t *testing.T) {
	t.Parallel()
	db := pgtest.Database(t)
	all := []string{"a1", "b1"}
	dirA, dirB := t.TempDir(), t.TempDir()
	confA := serveConfig("host-a", []string{"a1"}, all, "0", collectProfile)
	confB := strings.Replace(serveConfig("host-b", []string{"b1"}, all, "0", collectProfile), "[queue]\n", "[queue]\nartifact_limit = 1024\n", 1)
	require.NoError(t, os.WriteFile(filepath.Join(dirA, "config.toml"), []byte(confA), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dirB, "config.toml"), []byte(confB), 0o644))
	a := startServe(t, dirA, "--database", db)
	b := startServe(t, dirB, "--database", db)

	sample := bytes.Repeat([]byte("a clean sample, 4 KiB of it. "), 142)
	var body bytes.Buffer
	w := multipart.NewWriter(&body)
	require.NoError(t, w.WriteField("profile", "collect"))
	fw, err := w.CreateFormFile("file", "sample.bin")
	require.NoError(t, err)
	_, _ = fw.Write(sample)
	require.NoError(t, w.Close())
	var task struct{ ID string }
	require.Equal(t, http.StatusAccepted, a.api("POST", "/v1/tasks", &body, w.FormDataContentType(), &task))
	waitFor(t, time.Minute, "the task ended", func() bool { return a.task(task.ID).State == "done" })
	done := a.task(task.ID)
	require.Len(t, done.Results, 1)
	require.Equal(t, "host-b", done.Results[0].Host)

	sum := sha256.Sum256(sample)
	onB := filepath.Join(dirB, "results", hex.EncodeToString(sum[:]), task.ID, "collect", "artifacts")
	log, err := os.ReadFile(filepath.Join(onB, "log"))
	require.NoError(t, err)
	status, got := a.get("/v1/tasks/" + task.ID + "/artifacts/collect/log")
	require.Equal(t, http.StatusOK, status, string(got))
	assert.Equal(t, log, got, "host A serves host B's artifact, byte for byte")
	assert.NoFileExists(t, filepath.Join(dirA, "results", hex.EncodeToString(sum[:]), task.ID, "collect", "artifacts", "log"),
		"not from a disk of its own")

	status, got = a.get("/v1/tasks/" + task.ID + "/artifacts/collect/sample.bin")
	assert.Equal(t, http.StatusNotFound, status)
	assert.Contains(t, string(got), "kept only on host host-b")
	status, got = b.get("/v1/tasks/" + task.ID + "/artifacts/collect/sample.bin")
	require.Equal(t, http.StatusOK, status, string(got))
	assert.Equal(t, sample, got)

	// Host A's page shows both hosts alive, and the task run on B.
	status, page := a.get("/")
	require.Equal(t, http.StatusOK, status)
	assert.Contains(t, string(page), `<tr data-host="host-b">`)
	assert.Contains(t, string(page), `<tr data-host="host-a">`)
	assert.NotContains(t, string(page), "dead: its running analyses")
	status, page = a.get("/tasks/" + task.ID)
	require.Equal(t, http.StatusOK, status)
	assert.Contains(t, string(page), "on host host-b")
	assert.Contains(t, string(page), `href="/tasks/`+task.ID+`/artifacts/collect/log"`)

	assert.Equal(t, 0, a.stop(syscall.SIGTERM, time.Minute))
	assert.Equal(t, 0, b.stop(syscall.SIGTERM, time.Minute))
}
