package libvirt

import (
	"context"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/hypervisor"
)

// A libvirtd that takes the connection and never answers (hung) costs a
// call timeouts.connect, and the call says so; a caller's earlier deadline
// ends the wait at that deadline.
func TestAHungLibvirtdIsGivenUpAtTheConnectTimeout(t *testing.T) {
	t.Parallel()
	sock := filepath.Join(t.TempDir(), "libvirt-sock")
	ln, err := net.Listen("unix", sock)
	require.NoError(t, err)
	var (
		mu    sync.Mutex
		conns []net.Conn
	)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})

	c := &conn{uri: "qemu:///system", socket: sock, timeout: 300 * time.Millisecond}
	begun := time.Now()
	err = c.do(context.Background(), hypervisor.OpStatus, "vm1", func(*golibvirt.Libvirt) error { return nil })
	took := time.Since(begun)
	assert.Equal(t, hypervisor.CodeUnavailable, hypervisor.CodeOf(err), "%v", err)
	assert.ErrorContains(t, err, "libvirtd accepted no connection within 300ms")
	assert.ErrorContains(t, err, sock)
	assert.GreaterOrEqual(t, took, 300*time.Millisecond)
	assert.Less(t, took, 10*time.Second)

	c.timeout = time.Hour
	begun = time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	err = c.do(ctx, hypervisor.OpStatus, "vm1", func(*golibvirt.Libvirt) error { return nil })
	took = time.Since(begun)
	assert.Equal(t, hypervisor.CodeTimeout, hypervisor.CodeOf(err), "%v", err)
	assert.GreaterOrEqual(t, took, 200*time.Millisecond)
	assert.Less(t, took, 10*time.Second, "the caller's deadline ended the wait")
}
