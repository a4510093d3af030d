//go:build linux

package main_test

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// openFiles counts a process's open file descriptors.
func openFiles(t *testing.T, pid int) int {
	t.Helper()
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	require.NoError(t, err)
	return len(entries)
}

// A crowd of clients that open connections and never finish a request
// cannot starve the service of files: with 500 of them connected to a
// service allowed 128 open files, the running task still writes what it
// must, its VM is cleaned and stays in service, and the clients are cut
// at read_timeout.
func TestATaskEndsCleanWhile500SlowClientsAreConnected(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("load test skipped: -short (make test-short) leaves out 500 clients held for read_timeout")
	}
	const nofile, clients = 128, 500
	dir := t.TempDir()
	conf := serveConfig("solo", []string{"vm1"}, []string{"vm1"}, "3",
		"[server]\nread_timeout = \"15s\"\nmax_connections = 64\nmax_uploads = 4\n")
	require.NoError(t, os.WriteFile(filepath.Join(dir, "config.toml"), []byte(conf), 0o644))
	// The shell lowers the limit, soft and hard, for the service alone.
	cmd := exec.Command("/bin/sh", "-c", fmt.Sprintf(`ulimit -n %d && exec "$0" "$@"`, nofile), sandboxBin,
		"--config", filepath.Join(dir, "config.toml"), "--log-level", "info", "serve", "--listen", "127.0.0.1:0")
	s := startServeCmd(t, cmd)
	id := s.submit("sample.txt", "a sample")
	waitFor(t, 30*time.Second, "the task analysing", func() bool { return strings.Contains(s.logs(), "engine: analyzing") })

	addr := strings.TrimPrefix(s.url, "http://")
	var conns []net.Conn
	for range clients {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		require.NoError(t, err)
		conns = append(conns, c)
		_, _ = c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n")) // and never the end of the headers
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	peak := openFiles(t, s.cmd.Process.Pid)
	waitFor(t, time.Minute, "the task ended", func() bool {
		peak = max(peak, openFiles(t, s.cmd.Process.Pid))
		return strings.Contains(s.logs(), "task ended")
	})
	t.Logf("%d clients connected; the service held at most %d files of its %d", clients, peak, nofile)
	for line := range strings.Lines(s.logs()) {
		if strings.Contains(line, "too many open files") || strings.Contains(line, "quarantine") {
			t.Errorf("the service's log: %s", line)
		}
	}

	// Cut at read_timeout, the crowd makes room for the API again.
	for _, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(time.Minute))
	}
	closed := 0
	for _, c := range conns[:10] {
		if _, err := c.Read(make([]byte, 1)); err != nil {
			closed++
		}
	}
	assert.Equal(t, 10, closed, "the server closed the stalled connections")
	task := s.task(id)
	assert.Equal(t, "done", task.State)
	var vms struct {
		VMs []struct {
			Name         string
			Quarantine   any    `json:"quarantine"`
			OutOfService string `json:"out_of_service"`
		}
	}
	require.Equal(t, 200, s.api("GET", "/v1/vms", nil, "", &vms))
	require.Len(t, vms.VMs, 1)
	assert.Nil(t, vms.VMs[0].Quarantine, "the VM stays in service")
	assert.Empty(t, vms.VMs[0].OutOfService)
	assert.Equal(t, 0, s.stop(syscall.SIGTERM, time.Minute))
}
