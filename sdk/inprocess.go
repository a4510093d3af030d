package sdk

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk/internal/pb"
)

// InProcess is a driver served inside the calling process over a real gRPC
// connection: the same server and client adapters, error details and
// deadline propagation as a plugin process, without the process. Tests and
// the conformance suite use it so that an in-process driver is exercised
// exactly as the host would see it once built as a plugin.
type InProcess struct {
	Remote

	server *grpc.Server
	conn   *grpc.ClientConn
	slot   *driverSlot
	dir    string
	once   sync.Once
}

// ServeInProcess builds the driver with factory from cfg and serves it on
// a unix socket in a fresh temporary directory, then connects to it through
// the client adapter and sends cfg through Configure, as the host does after
// a launch. The factory gets logger (nil discards). With
// WithMaxProtocol(1) only the legacy protocol is served and the returned
// Remote speaks it. Close releases everything, the driver included.
func ServeInProcess(ctx context.Context, factory Factory, cfg Config, logger hclog.Logger, opts ...ServeOption) (*InProcess, error) {
	o := serveOptions{maxProtocol: ProtocolV2}
	for _, opt := range opts {
		opt(&o)
	}
	if o.maxProtocol < ProtocolV1 || o.maxProtocol > ProtocolV2 {
		return nil, fmt.Errorf("sdk: protocol %d: want 1 or 2", o.maxProtocol)
	}
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	// Short, fresh directory: a unix socket path must stay under ~100 bytes.
	dir, err := os.MkdirTemp("", "sandbox-inproc-")
	if err != nil {
		return nil, fmt.Errorf("sdk: socket directory: %w", err)
	}
	sock := filepath.Join(dir, "plugin.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("sdk: listen on %s: %w", sock, err)
	}
	slot := newSlot(factory, logger, o)
	server := grpc.NewServer(slot.diag.serverOptions()...)
	var remote Remote
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		lis.Close()
		os.RemoveAll(dir)
		return nil, fmt.Errorf("sdk: connect to %s: %w", sock, err)
	}
	if o.maxProtocol == ProtocolV1 {
		pb.RegisterHypervisorV1Server(server, &serverV1{slot: slot})
		remote = &clientV1{c: pb.NewHypervisorV1Client(conn)}
	} else {
		pb.RegisterHypervisorV2Server(server, &serverV2{slot: slot})
		remote = &clientV2{c: pb.NewHypervisorV2Client(conn)}
	}
	go func() { _ = server.Serve(lis) }()
	p := &InProcess{Remote: remote, server: server, conn: conn, slot: slot, dir: dir}
	if err := remote.Configure(ctx, cfg); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

// Served is the driver itself, as the factory built it, without the wire
// between: what the conformance suite checks where the wire would hide a
// fault (a watch channel never closed, §10.1).
func (p *InProcess) Served() hypervisor.Driver {
	return p.slot.served()
}

// Close closes the connection, stops the server (ending any Watch streams
// still open) and closes the driver if it has a Close method. It is safe to
// call more than once.
func (p *InProcess) Close() error {
	var err error
	p.once.Do(func() {
		err = p.conn.Close()
		p.server.Stop()
		p.slot.close()
		err = errors.Join(err, os.RemoveAll(p.dir))
	})
	return err
}
