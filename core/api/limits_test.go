package api_test

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/engine"
)

// dial opens a raw connection to the service.
func (s *service) dial() net.Conn {
	s.t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(s.url, "http://"))
	require.NoError(s.t, err)
	s.t.Cleanup(func() { c.Close() })
	return c
}

// closedByServer waits, up to within, for the server to close c (reading
// and dropping whatever it sends first); it reports what it read.
func closedByServer(t *testing.T, c net.Conn, within time.Duration) string {
	t.Helper()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(within)))
	data, err := io.ReadAll(c)
	var ne net.Error
	if err != nil && (!strings.Contains(err.Error(), "reset") && !(asNetError(err, &ne) && !ne.Timeout())) {
		require.NoError(t, err, "the server did not close the connection within %s", within)
	}
	return string(data)
}

func asNetError(err error, ne *net.Error) bool {
	e, ok := err.(net.Error)
	if ok {
		*ne = e
	}
	return ok
}

// A wrong method on an endpoint is answered 405 with the methods it
// takes; a path that is no endpoint, 404.
func TestAWrongMethodIsAnswered405WithAllow(t *testing.T) {
	s := newService(t)
	for _, c := range []struct{ method, path, allow string }{
		{"DELETE", "/v1/tasks", "GET, HEAD, POST"},
		{"PUT", "/v1/vms/win/cleanup", "POST"},
		{"POST", "/v1/tasks/abc", "GET, HEAD"},
		{"GET", "/v1/tasks/abc/cancel", "POST"},
	} {
		req, err := http.NewRequest(c.method, s.url+c.path, nil)
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := s.client.Do(req)
		require.NoError(t, err)
		var e errorJSON
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&e))
		resp.Body.Close()
		assert.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode, "%s %s", c.method, c.path)
		assert.Equal(t, c.allow, resp.Header.Get("Allow"), "%s %s", c.method, c.path)
		assert.Equal(t, "method_not_allowed", e.Error.Code)
	}
	var e errorJSON
	assert.Equal(t, http.StatusNotFound, s.call("DELETE", "/v1/nothing", token, nil, "", &e))
	assert.Equal(t, "not_found", e.Error.Code)
}

// RFC 9110 makes the authentication scheme case-insensitive.
func TestTheBearerSchemeIsCaseInsensitive(t *testing.T) {
	s := newService(t)
	for _, header := range []string{"Bearer " + token, "bearer " + token, "BEARER  " + token} {
		req, _ := http.NewRequest("GET", s.url+"/v1/profiles", nil)
		req.Header.Set("Authorization", header)
		resp, err := s.client.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusOK, resp.StatusCode, header)
	}
	for _, header := range []string{"Basic " + token, token, "Bearer", "Bearer " + token + "x"} {
		req, _ := http.NewRequest("GET", s.url+"/v1/profiles", nil)
		req.Header.Set("Authorization", header)
		resp, err := s.client.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, header)
	}
}

// A client without the token that sends a body is answered 401 at once
// and the connection closed: the server does not read (or wait for) the
// rest of the body first, whether it is chunked or of a length the server
// would otherwise read to keep the connection.
func TestARefusalDoesNotWaitForTheBody(t *testing.T) {
	s := newService(t, withServer(func(c *config.Server) { c.ReadTimeout = time.Minute }))
	for _, framing := range []string{"Transfer-Encoding: chunked\r\n\r\n5\r\n--x\r\n\r\n", "Content-Length: 200000\r\n\r\n--x\r\n"} {
		c := s.dial()
		_, err := fmt.Fprint(c, "POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=x\r\n"+framing)
		require.NoError(t, err)
		// Well before read_timeout: the server neither drained nor waited.
		got := closedByServer(t, c, 20*time.Second)
		resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(got)), nil)
		require.NoError(t, err, got)
		assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
		assert.True(t, resp.Close, "the answer says the connection closes")
	}
}

// Slow and idle clients are cut at the configured timeouts: headers that
// never end, a kept-alive connection with no next request, an upload
// that stops arriving. An upload waiting for one of max_uploads is told
// to come back.
func TestSlowAndIdleClientsAreCut(t *testing.T) {
	const limit = 400 * time.Millisecond
	s := newService(t, withServer(func(c *config.Server) {
		c.ReadTimeout, c.IdleTimeout, c.MaxUploads = limit, limit, 1
	}))

	t.Run("headers that never end", func(t *testing.T) {
		c := s.dial()
		_, err := fmt.Fprint(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n")
		require.NoError(t, err)
		closedByServer(t, c, 50*limit)
	})
	t.Run("an idle kept-alive connection", func(t *testing.T) {
		c := s.dial()
		_, err := fmt.Fprint(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
		require.NoError(t, err)
		got := closedByServer(t, c, 50*limit)
		assert.True(t, strings.HasPrefix(got, "HTTP/1.1 200 OK"), got)
	})
	t.Run("an upload that stops arriving", func(t *testing.T) {
		c := s.dial()
		_, err := fmt.Fprintf(c, "POST /v1/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"+
			"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 100000\r\n\r\n"+
			"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\nsome bytes", token)
		require.NoError(t, err)
		got := closedByServer(t, c, 50*limit)
		resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(got)), nil)
		require.NoError(t, err, got)
		var e errorJSON
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&e))
		assert.Equal(t, http.StatusRequestTimeout, resp.StatusCode)
		assert.Equal(t, "timeout", e.Error.Code, e.Error.Message)
	})
	t.Run("an upload beyond max_uploads", func(t *testing.T) {
		// One upload keeps arriving, a byte at a time, and holds the
		// only slot; another waits read_timeout for it and is turned away.
		c := s.dial()
		_, err := fmt.Fprintf(c, "POST /v1/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"+
			"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 100000\r\n\r\n"+
			"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\n", token)
		require.NoError(t, err)
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				case <-time.After(limit / 8):
					if _, err := c.Write([]byte("x")); err != nil {
						return
					}
				}
			}
		})
		defer func() { close(stop); wg.Wait() }()
		time.Sleep(limit / 4) // the trickle has the slot
		body, ct := form(t, "b.txt", []byte("b"))
		var e errorJSON
		resp := s.raw("POST", "/v1/tasks", body, ct, &e)
		assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
		assert.Equal(t, "busy", e.Error.Code, e.Error.Message)
		assert.NotEmpty(t, resp.Header.Get("Retry-After"))
	})
}

// raw is call that also returns the answer's headers.
func (s *service) raw(method, path string, body io.Reader, contentType string, out any) *http.Response {
	s.t.Helper()
	req, err := http.NewRequest(method, s.url+path, body)
	require.NoError(s.t, err)
	req.Header.Set("Authorization", "Bearer "+token)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := s.client.Do(req)
	require.NoError(s.t, err)
	defer resp.Body.Close()
	if out != nil {
		require.NoError(s.t, json.NewDecoder(resp.Body).Decode(out))
	}
	return resp
}

// Connections beyond max_connections wait, unserved, until the clients
// holding the others are cut at read_timeout.
func TestConnectionsBeyondTheBoundWait(t *testing.T) {
	const limit = 500 * time.Millisecond
	s := newService(t, withServer(func(c *config.Server) { c.ReadTimeout, c.MaxConnections = limit, 2 }))
	var closed sync.WaitGroup
	var mu sync.Mutex
	var lastClosed time.Time
	for range 2 {
		c := s.dial()
		// A byte, so that the server is surely holding the connection.
		_, err := c.Write([]byte("G"))
		require.NoError(t, err)
		closed.Go(func() {
			closedByServer(t, c, 50*limit)
			mu.Lock()
			lastClosed = time.Now()
			mu.Unlock()
		})
	}
	time.Sleep(limit / 5)
	resp, err := s.client.Get(s.url + "/healthz")
	require.NoError(t, err)
	resp.Body.Close()
	answered := time.Now()
	closed.Wait()
	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.False(t, answered.Before(lastClosed.Add(-limit/2)), "a third connection was served while two held the bound")
}

// A running task says where each analysis is: its step, VM and host, in
// the API and on its page; cancelled, it shows as cancelled.
func TestARunningTaskShowsItsProgress(t *testing.T) {
	s := newService(t, withSlow)
	task := s.submit("slow.bin", []byte("slow"), "profile", "slow")
	s.waitStep("linux", engine.StepAnalyzing)
	// Every host's API reads where it is from its row, which the host
	// running it keeps up to date.
	var got struct {
		State    string
		Analyses []struct {
			Profile, State, Host, VM, Step string
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		require.Equal(t, http.StatusOK, s.call("GET", "/v1/tasks/"+task.ID, token, nil, "", &got))
		if len(got.Analyses) == 1 && got.Analyses[0].Step == "analyzing" || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond) // polling as a client would
	}
	assert.Equal(t, "running", got.State)
	require.Len(t, got.Analyses, 1)
	assert.Equal(t, "slow", got.Analyses[0].Profile)
	assert.Equal(t, "running", got.Analyses[0].State)
	assert.Equal(t, "linux", got.Analyses[0].VM)
	assert.Equal(t, "analyzing", got.Analyses[0].Step)
	assert.Equal(t, "test-host", got.Analyses[0].Host)
	var e errorJSON
	assert.Equal(t, http.StatusNotFound, s.call("GET", "/v1/tasks/"+task.ID+"/report", token, nil, "", &e), "no report before the end")

	page := s.page("/tasks/"+task.ID, token)
	assert.Contains(t, page, `<td class="running">analyzing for`)
	assert.Contains(t, s.page("/", token), "on linux for")

	require.Equal(t, http.StatusOK, s.call("POST", "/v1/tasks/"+task.ID+"/cancel", token, nil, "", nil))
	s.wait(task.ID)
	var rep engine.Report
	require.Equal(t, http.StatusOK, s.call("GET", "/v1/tasks/"+task.ID+"/report", token, nil, "", &rep))
	assert.Equal(t, engine.ReportSchema, rep.Schema)
	assert.Contains(t, s.page("/", token), `<td class="cancelled">cancelled</td>`)
	assert.Contains(t, s.page("/tasks/"+task.ID, token), `<td class="cancelled" id="state">cancelled</td>`)
}

// A submission whose last byte has arrived is not cut at read_timeout
// while the queue waits to store it: under load, sixteen uploads finishing
// at once wait their turn for the database, and the last may wait longer
// than read_timeout. Another process holds SQLite's write lock here for
// three read_timeouts after the upload has been read.
func TestASubmissionWaitingForTheDatabaseIsNotCut(t *testing.T) {
	const limit = 300 * time.Millisecond
	s := newService(t, withServer(func(c *config.Server) { c.ReadTimeout = limit }))
	other, err := sql.Open("sqlite", "file:"+filepath.Join(s.dir, "queue.db")+"?_pragma=busy_timeout(10000)")
	require.NoError(t, err)
	defer other.Close()
	ctx := context.Background()
	conn, err := other.Conn(ctx)
	require.NoError(t, err)
	defer conn.Close()
	_, err = conn.ExecContext(ctx, "BEGIN IMMEDIATE")
	require.NoError(t, err)
	held := time.AfterFunc(3*limit, func() { _, _ = conn.ExecContext(ctx, "ROLLBACK") })
	defer held.Stop()

	// The last bytes come a moment after the rest, as the end of a long
	// upload does, so that the server reads them apart from the others;
	// with a Content-Length, the body's end comes with them.
	body, ct := form(t, "a.txt", bytes.Repeat([]byte("a sample "), 1000), "profile", "clamav")
	size := int64(body.(*bytes.Buffer).Len())
	req, err := http.NewRequest("POST", s.url+"/v1/tasks", &lateEnd{r: body, after: limit / 4})
	require.NoError(t, err)
	req.ContentLength = size
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", ct)
	resp, err := s.client.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	var out taskJSON
	data, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusAccepted, resp.StatusCode, "the submission waited for the database: %s", data)
	require.NoError(t, json.Unmarshal(data, &out))
	assert.Equal(t, "done", s.wait(out.ID).State)
}

// lateEnd gives all but r's last 100 bytes at once, and those after a pause.
type lateEnd struct {
	r           io.Reader
	after       time.Duration
	head, tail  []byte
	read, slept bool
}

func (l *lateEnd) Read(p []byte) (int, error) {
	if !l.read {
		all, err := io.ReadAll(l.r)
		if err != nil {
			return 0, err
		}
		cut := max(len(all)-100, 0)
		l.head, l.tail, l.read = all[:cut], all[cut:], true
	}
	if len(l.head) > 0 {
		n := copy(p, l.head)
		l.head = l.head[n:]
		return n, nil
	}
	if !l.slept {
		time.Sleep(l.after)
		l.slept = true
	}
	n := copy(p, l.tail)
	l.tail = l.tail[n:]
	if len(l.tail) == 0 {
		return n, io.EOF
	}
	return n, nil
}
