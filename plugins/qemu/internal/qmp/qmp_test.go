package qmp_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/plugins/qemu/internal/qmp"
)

// A QEMU socket played by the test: handle gets each accepted connection.
func serve(t *testing.T, handle func(c net.Conn)) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "qmp")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "s")
	l, err := net.Listen("unix", path)
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); handle(c) }()
		}
	}()
	return path
}

const greeting = `{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian"}, "capabilities": ["oob"]}}` + "\r\n"

// A monitor reads the greeting, negotiates, skips events and replies to
// earlier commands, and keeps events for WaitEvent.
func TestMonitorSkipsEventsAndForeignReplies(t *testing.T) {
	path := serve(t, func(c net.Conn) {
		r := bufio.NewReader(c)
		c.Write([]byte(greeting))
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return
			}
			var req struct {
				Execute string
				ID      string
			}
			require.NoError(t, json.Unmarshal(line, &req))
			switch req.Execute {
			case "qmp_capabilities":
				c.Write([]byte(`{"return": {}, "id": "` + req.ID + `"}` + "\r\n"))
			case "query-status":
				c.Write([]byte(`{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}` + "\r\n"))
				c.Write([]byte(`{"return": {"status": "running"}, "id": "someone-else"}` + "\r\n"))
				c.Write([]byte(`{"return": {"status": "paused", "singlestep": false, "running": false}, "id": "` + req.ID + `"}` + "\r\n"))
			case "system_powerdown":
				c.Write([]byte(`{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "POWERDOWN"}` + "\r\n"))
				c.Write([]byte(`{"return": {}, "id": "` + req.ID + `"}` + "\r\n"))
			case "human-monitor-command":
				c.Write([]byte(`{"return": "Error: Snapshot 'nosuch' does not exist in one or more devices\r\n", "id": "` + req.ID + `"}` + "\r\n"))
			default:
				c.Write([]byte(`{"error": {"class": "CommandNotFound", "desc": "The command ` + req.Execute + ` has not been found"}, "id": "` + req.ID + `"}` + "\r\n"))
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	m, err := qmp.DialMonitor(ctx, path)
	require.NoError(t, err)
	defer m.Close()
	st, err := m.QueryStatus(ctx)
	require.NoError(t, err)
	assert.Equal(t, qmp.Status{Status: "paused"}, st)
	require.NoError(t, m.Execute(ctx, "system_powerdown", nil, nil))
	ev, err := m.WaitEvent(ctx, "POWERDOWN")
	require.NoError(t, err)
	assert.Equal(t, "POWERDOWN", ev.Name)

	err = m.Execute(ctx, "no-such-cmd", nil, nil)
	var qe *qmp.Error
	require.ErrorAs(t, err, &qe)
	assert.Equal(t, "CommandNotFound", qe.Class)

	out, err := m.HumanCommand(ctx, "loadvm nosuch")
	require.ErrorAs(t, err, &qe, "HMP's error text in a successful reply is an error")
	assert.Equal(t, "Snapshot 'nosuch' does not exist in one or more devices", qe.Desc)
	assert.Contains(t, out, "Error:")
}

// QEMU queues a second client silently: it gets no greeting. That is
// ErrBusy at the caller's deadline, not a hang.
func TestMonitorHeldByAnotherClientIsBusy(t *testing.T) {
	path := serve(t, func(c net.Conn) { time.Sleep(5 * time.Second) })
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	begun := time.Now()
	_, err := qmp.DialMonitor(ctx, path)
	assert.ErrorIs(t, err, qmp.ErrBusy)
	assert.Less(t, time.Since(begun), 2*time.Second)
}

func TestMonitorWithoutSocket(t *testing.T) {
	_, err := qmp.DialMonitor(context.Background(), filepath.Join(t.TempDir(), "gone.sock"))
	assert.ErrorIs(t, err, qmp.ErrNoSocket)
}

// The agent's handshake: everything before the reply carrying the sync id
// (replies meant for an earlier client, the error for the 0xFF byte) is
// read past; a command's reply then is its own.
func TestAgentSyncReadsPastStaleReplies(t *testing.T) {
	path := serve(t, func(c net.Conn) {
		c.Write([]byte(`{"return": {"pid": 41}}` + "\n")) // left over from an earlier client
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return
			}
			line = bytes.TrimPrefix(line, []byte{0xff})
			var req struct {
				Execute   string
				Arguments map[string]json.RawMessage
			}
			require.NoError(t, json.Unmarshal(line, &req))
			switch req.Execute {
			case "guest-sync-delimited":
				id := req.Arguments["id"]
				c.Write([]byte(`{"error": {"class": "GenericError", "desc": "JSON parse error, stray '\uFFFD'"}}` + "\n"))
				c.Write(append(append([]byte{0xff}, `{"return": `+string(id)+`}`...), '\n'))
			case "guest-exec":
				c.Write([]byte(`{"return": {"pid": 110}}` + "\n"))
			case "guest-exec-status":
				c.Write([]byte(`{"return": {"exitcode": 3, "err-data": "ZXJyCg==", "out-data": "b3V0Cg==", "exited": true}}` + "\n"))
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	a, err := qmp.DialAgent(ctx, path)
	require.NoError(t, err)
	defer a.Close()
	pid, err := a.Exec(ctx, "/bin/sh", []string{"-c", "exit 3"})
	require.NoError(t, err)
	assert.Equal(t, 110, pid)
	st, err := a.ExecStatus(ctx, pid, 1024)
	require.NoError(t, err)
	assert.True(t, st.Exited)
	assert.Equal(t, 3, *st.ExitCode)
	assert.Equal(t, "b3V0Cg==", st.OutData)
}

// An agent that never answers (not started yet) is ErrNoAgent at the
// deadline, after resending the sync on the same connection.
func TestAgentNotAnswering(t *testing.T) {
	got := make(chan int, 1)
	path := serve(t, func(c net.Conn) {
		n := 0
		r := bufio.NewReader(c)
		for {
			if _, err := r.ReadBytes('\n'); err != nil {
				got <- n
				return
			}
			n++
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 1200*time.Millisecond)
	defer cancel()
	_, err := qmp.DialAgent(ctx, path)
	assert.True(t, errors.Is(err, qmp.ErrNoAgent), "%v", err)
	assert.GreaterOrEqual(t, <-got, 2, "the sync was resent")
}

// A slow agent answers a resent handshake twice: the reply to the first
// attempt, then the parse error and the reply of the second. Only the
// last attempt's reply ends the handshake, so the next command does not
// read the second attempt's parse error as its own reply.
func TestAgentSyncResentReadsPastEveryEarlierAttempt(t *testing.T) {
	path := serve(t, func(c net.Conn) {
		r := bufio.NewReader(c)
		syncs := 0
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return
			}
			line = bytes.TrimPrefix(line, []byte{0xff})
			var req struct {
				Execute   string
				Arguments map[string]json.RawMessage
			}
			require.NoError(t, json.Unmarshal(line, &req))
			switch req.Execute {
			case "guest-sync-delimited":
				if syncs++; syncs == 1 {
					time.Sleep(700 * time.Millisecond) // slower than one attempt: the client resends
				}
				c.Write([]byte(`{"error": {"class": "GenericError", "desc": "JSON parse error, stray '\uFFFD'"}}` + "\n"))
				c.Write(append(append([]byte{0xff}, `{"return": `+string(req.Arguments["id"])+`}`...), '\n'))
			case "guest-exec":
				c.Write([]byte(`{"return": {"pid": 7}}` + "\n"))
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	a, err := qmp.DialAgent(ctx, path)
	require.NoError(t, err)
	defer a.Close()
	pid, err := a.Exec(ctx, "/bin/true", nil)
	require.NoError(t, err, "the command read its own reply")
	assert.Equal(t, 7, pid)
}

// agentWith plays a guest agent that answers the handshake and hands every
// other command to reply.
func agentWith(t *testing.T, reply func(c net.Conn, execute string)) string {
	return serve(t, func(c net.Conn) {
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return
			}
			line = bytes.TrimPrefix(line, []byte{0xff})
			var req struct {
				Execute   string
				Arguments map[string]json.RawMessage
			}
			if json.Unmarshal(line, &req) != nil {
				continue
			}
			if req.Execute == "guest-sync-delimited" {
				c.Write(append(append([]byte{0xff}, `{"return": `+string(req.Arguments["id"])+`}`...), '\n'))
				continue
			}
			reply(c, req.Execute)
		}
	})
}

// heapSys is how much memory the Go heap holds from the system now.
func heapSys() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapSys
}

// A guest that took over the agent's channel writes a line that never
// ends: the call answers at its deadline, having held no more than a
// frame's bound of it.
func TestAgentFloodedByANeverEndingLine(t *testing.T) {
	path := agentWith(t, func(c net.Conn, _ string) {
		chunk := bytes.Repeat([]byte("A"), 1<<20)
		for {
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	a, err := qmp.DialAgent(ctx, path)
	require.NoError(t, err)
	defer a.Close()
	before := heapSys()
	cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
	defer ccancel()
	begun := time.Now()
	_, err = a.ExecStatus(cctx, 1, 1<<20)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Less(t, time.Since(begun), 4*time.Second, "the call answers at its deadline")
	grew := int64(heapSys()) - int64(before)
	t.Logf("the heap grew by %d KiB while the guest wrote without end", grew>>10)
	assert.Less(t, grew, int64(32<<20), "the agent session buffered the flood")
}

// A reply longer than any bound is dropped, the command fails saying so,
// and the next command synchronises and reads its own reply.
func TestAgentDropsAnOversizeReplyAndResynchronises(t *testing.T) {
	calls := 0
	path := agentWith(t, func(c net.Conn, execute string) {
		switch calls++; calls {
		case 1: // 8 MB of digits: no string to cut
			c.Write([]byte(`{"return": [`))
			for range 1 << 10 {
				c.Write(bytes.Repeat([]byte("1234567,"), 1<<10))
			}
			c.Write([]byte("1]}\n"))
		default:
			c.Write([]byte(`{"return": {"pid": 9}}` + "\n"))
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a, err := qmp.DialAgent(ctx, path)
	require.NoError(t, err)
	defer a.Close()
	_, err = a.Exec(ctx, "/bin/true", nil)
	assert.ErrorIs(t, err, qmp.ErrFrameTooLong)
	pid, err := a.Exec(ctx, "/bin/true", nil)
	require.NoError(t, err)
	assert.Equal(t, 9, pid)
}

// A command's output past the bound asked for is cut in the reply and
// said to be truncated; a file read that returns more than it asked for
// fails.
func TestAgentCutsOutputToItsBound(t *testing.T) {
	big := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte("x"), 3<<20))
	path := agentWith(t, func(c net.Conn, execute string) {
		switch execute {
		case "guest-exec-status":
			c.Write([]byte(`{"return": {"exitcode": 0, "out-data": "` + big + `", "err-data": "ZXJyCg==", "exited": true}}` + "\n"))
		case "guest-file-read":
			c.Write([]byte(`{"return": {"count": 3145728, "buf-b64": "` + big + `", "eof": false}}` + "\n"))
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a, err := qmp.DialAgent(ctx, path)
	require.NoError(t, err)
	defer a.Close()
	st, err := a.ExecStatus(ctx, 1, 100<<10)
	require.NoError(t, err)
	assert.True(t, st.OutTruncated)
	assert.False(t, st.ErrTruncated)
	assert.LessOrEqual(t, len(st.OutData), (100<<10+2)/3*4)
	assert.Equal(t, "ZXJyCg==", st.ErrData)

	_, _, err = a.FileRead(ctx, 1, 64<<10)
	assert.ErrorContains(t, err, "more than the 65536 bytes asked")
}
