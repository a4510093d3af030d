package api_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/engine"
)

// download GETs an artifact with the token and returns its status and
// bytes.
func (s *service) download(path string) (int, []byte, http.Header) {
	s.t.Helper()
	req, err := http.NewRequest("GET", s.url+path, nil)
	require.NoError(s.t, err)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := s.client.Do(req)
	require.NoError(s.t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(s.t, err)
	return resp.StatusCode, data, resp.Header
}

// ended waits for a task and returns it whole, its report's artifacts
// included.
func (s *service) ended(id string) (taskJSON, *engine.Report) {
	s.t.Helper()
	got := s.wait(id)
	var rep engine.Report
	require.Equal(s.t, http.StatusOK, s.call("GET", "/v1/tasks/"+id+"/report", token, nil, "", &rep))
	return got, &rep
}

// An artifact comes over the API and from the task's page, byte for byte
// what the analysis brought back; once the retention has passed, the
// task's sample and artifacts are gone from the database and the disk,
// its report stays, and a sample that a task still waiting needs stays.
func TestArtifactsOverTheAPIAndRetention(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) { artifactsAndRetention(t, newService(t, withSlow)) })
	t.Run("postgres", func(t *testing.T) { artifactsAndRetention(t, newService(t, withSlow, withPostgres(t))) })
}

func artifactsAndRetention(t *testing.T, s *service) {
	first, rep := s.ended(s.submit("eicar.com", eicar(), "profile", "clamav").ID)
	require.Equal(t, "done", first.State)
	require.Len(t, rep.Results, 1)
	require.Len(t, rep.Results[0].Artifacts, 1)
	art := rep.Results[0].Artifacts[0]
	require.Empty(t, art.Error)
	taskDir := filepath.Join(s.dir, "results", first.Sample.SHA256, first.ID)
	onDisk, err := os.ReadFile(filepath.Join(taskDir, filepath.FromSlash(art.Path)))
	require.NoError(t, err)

	link := "/v1/tasks/" + first.ID + "/artifacts/clamav/" + filepath.Base(art.Path)
	status, data, header := s.download(link)
	require.Equal(t, http.StatusOK, status, string(data))
	assert.Equal(t, onDisk, data)
	sum := sha256.Sum256(data)
	assert.Equal(t, `"`+hex.EncodeToString(sum[:])+`"`, header.Get("ETag"))
	assert.Equal(t, art.SHA256, hex.EncodeToString(sum[:]))
	assert.Contains(t, header.Get("Content-Disposition"), "attachment")
	page := s.page("/tasks/"+first.ID, token)
	assert.Contains(t, page, `href="/tasks/`+first.ID+`/artifacts/clamav/`+filepath.Base(art.Path)+`"`)
	assert.Equal(t, string(onDisk), s.page("/tasks/"+first.ID+"/artifacts/clamav/"+filepath.Base(art.Path), token))
	var e errorJSON
	assert.Equal(t, http.StatusNotFound, s.call("GET", "/v1/tasks/"+first.ID+"/artifacts/clamav/nope", token, nil, "", &e))
	assert.Equal(t, "not_found", e.Error.Code)

	// A second task of the same sample waits behind a slow one.
	slow := s.submit("slow.bin", []byte("slow"), "profile", "slow")
	s.waitStep("linux", engine.StepAnalyzing)
	waiting := s.submit("eicar.com", eicar(), "profile", "clamav")

	p, err := s.queue.Prune(context.Background(), time.Now().Add(time.Hour))
	require.NoError(t, err)
	assert.Equal(t, 1, p.Tasks, "only the task that ended")
	assert.Equal(t, 0, p.Samples, "the waiting task still needs the sample")
	assert.Equal(t, 1, p.Artifacts)
	assert.Equal(t, 1, p.Dirs)
	assert.NoDirExists(t, taskDir)
	assert.Equal(t, http.StatusNotFound, s.call("GET", link, token, nil, "", &e))
	assert.Contains(t, e.Error.Message, "retention")
	require.Equal(t, http.StatusOK, s.call("GET", "/v1/tasks/"+first.ID+"/report", token, nil, "", rep), "the report stays")

	// The waiting task runs on the sample it needs.
	require.Equal(t, http.StatusOK, s.call("POST", "/v1/tasks/"+slow.ID+"/cancel", token, nil, "", nil))
	second, _ := s.ended(waiting.ID)
	assert.Equal(t, "done", second.State, "%+v", second.Results)
	assert.Equal(t, "malicious", second.Verdict)

	// Once every task of it is pruned, the sample goes too; sent again,
	// it is stored again and analysed.
	p, err = s.queue.Prune(context.Background(), time.Now().Add(time.Hour))
	require.NoError(t, err)
	assert.Equal(t, 2, p.Tasks)
	assert.Equal(t, 2, p.Samples, "eicar.com's and slow.bin's")
	third, _ := s.ended(s.submit("eicar.com", eicar(), "profile", "clamav").ID)
	assert.Equal(t, "done", third.State)
	status, data, _ = s.download("/v1/tasks/" + third.ID + "/artifacts/clamav/" + filepath.Base(art.Path))
	assert.Equal(t, http.StatusOK, status, string(data))
	assert.Equal(t, onDisk, data, "the same sample, the same scan log")
}

// An artifact larger than artifact_limit stays on the disk of the host
// that ran the task, which serves it from there.
func TestALargeArtifactIsServedFromTheDiskOfItsHost(t *testing.T) {
	s := newService(t, func(o *serviceOptions) { o.artifactLimit = 1 })
	task, rep := s.ended(s.submit("eicar.com", eicar(), "profile", "clamav").ID)
	art := rep.Results[0].Artifacts[0]
	require.Greater(t, art.Size, int64(1))
	onDisk, err := os.ReadFile(filepath.Join(s.dir, "results", task.Sample.SHA256, task.ID, filepath.FromSlash(art.Path)))
	require.NoError(t, err)
	status, data, _ := s.download("/v1/tasks/" + task.ID + "/artifacts/clamav/" + filepath.Base(art.Path))
	assert.Equal(t, http.StatusOK, status, string(data))
	assert.Equal(t, onDisk, data)
}
