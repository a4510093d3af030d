package host_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/host"
	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk"
)

// The test binary doubles as a plugin and as a host: launched with
// envRole set, it serves or hosts instead of running tests, so that every
// test here crosses a real process boundary.
const envRole = "SANDBOX_HOST_TEST_ROLE"

// envSocket is the socket the "dial" role tries.
const envSocket = "SANDBOX_HOST_TEST_SOCKET"

func TestMain(m *testing.M) {
	switch os.Getenv(envRole) {
	case "plugin":
		fd1 = os.Stdout // before Serve puts a pipe of its own in os.Stdout
		sdk.Serve(newScripted)
		os.Exit(0)
	case "plugin-v3":
		// A plugin from a future sandbox: it only speaks protocol 3.
		plugin.Serve(&plugin.ServeConfig{
			HandshakeConfig:  sdk.Handshake,
			VersionedPlugins: map[int]plugin.PluginSet{3: {sdk.PluginName: v3Plugin{}}},
			GRPCServer:       plugin.DefaultGRPCServer,
		})
		os.Exit(0)
	case "host":
		runHost()
		os.Exit(0)
	case "dial":
		// Another local user trying the plugin's socket.
		conn, err := net.Dial("unix", os.Getenv(envSocket))
		if err != nil {
			fmt.Println("refused:", err)
			os.Exit(0)
		}
		conn.Close()
		fmt.Println("connected")
		os.Exit(0)
	}
	code := m.Run()
	_ = programs.Close()
	os.Exit(code)
}

// fd1 is the plugin's real stdout, which its go-plugin handshake went to.
var fd1 *os.File

// v3Plugin is a plugin of an unknown future protocol; it serves nothing.
type v3Plugin struct{ plugin.NetRPCUnsupportedPlugin }

func (v3Plugin) GRPCServer(*plugin.GRPCBroker, *grpc.Server) error { return nil }

func (v3Plugin) GRPCClient(context.Context, *plugin.GRPCBroker, *grpc.ClientConn) (any, error) {
	return nil, nil
}

// runHost launches one plugin, prints its pid and waits to be killed.
func runHost() {
	h := host.New(host.Options{
		Plugins: map[string]config.Plugin{"scripted": {AutoMTLS: true, StartTimeout: config.DefaultPluginStartTimeout, Path: os.Args[0], Env: []string{envRole + "=plugin", "GORACE"}}},
		File:    "host-test.toml",
	})
	p, _ := h.Plugin("scripted")
	if _, err := p.Status(context.Background(), "vm1"); err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	fmt.Println("pid", p.Pid())
	select {}
}

// scripted is a small driver whose answers depend on the VM name, so that
// tests can ask for each error and behaviour through the wire.
type scripted struct {
	hypervisor.Unimplemented
	log hclog.Logger

	mu      sync.Mutex
	running map[string]bool
	snap    map[string]string
}

func newScripted(cfg sdk.Config, log hclog.Logger) (hypervisor.Driver, error) {
	var c struct {
		Greeting string `toml:"greeting"`
	}
	if err := cfg.Decode(&c); err != nil {
		return nil, err
	}
	if c.Greeting == "refuse" {
		return nil, errors.New("the scripted driver will not greet anyone")
	}
	log.Info("scripted driver configured", "greeting", c.Greeting)
	return &scripted{log: log, running: map[string]bool{}, snap: map[string]string{}}, nil
}

var codeByVM = map[string]hypervisor.Code{
	"missing":     hypervisor.CodeNotFound,
	"locked":      hypervisor.CodeLocked,
	"wrong-state": hypervisor.CodeInvalidState,
	"no-support":  hypervisor.CodeUnsupported,
	"too-slow":    hypervisor.CodeTimeout,
	"no-hv":       hypervisor.CodeUnavailable,
	"broken":      hypervisor.CodeFailed,
}

func (s *scripted) fail(op, vm string) error {
	if code, ok := codeByVM[vm]; ok {
		return hypervisor.NewError(code, op, vm, "scripted %s for %s", code, vm)
	}
	return nil
}

// block waits for ctx when the VM is named "hang", so a test has a call in
// flight to kill the plugin under.
func (s *scripted) block(ctx context.Context, op, vm string) error {
	if vm != "hang" {
		return nil
	}
	s.log.Info("call in flight", "op", op)
	<-ctx.Done()
	return hypervisor.FromContext(ctx, op, vm)
}

func (s *scripted) Info(context.Context) (hypervisor.Info, error) {
	return hypervisor.Info{Name: "scripted", Version: "0.1", ContractVersion: hypervisor.ContractVersion,
		Capabilities: hypervisor.NewCapabilities(hypervisor.CapList, hypervisor.CapStopPowerOff, hypervisor.CapRestore,
			hypervisor.CapWatch, hypervisor.CapGuestExec, "future.capability")}, nil
}

func (s *scripted) ListVMs(context.Context) ([]hypervisor.VM, error) {
	return []hypervisor.VM{{Name: "vm1", ID: "id-1", Power: hypervisor.PowerOff}, {Name: "vm2", Power: "levitating"}}, nil
}

func (s *scripted) Status(ctx context.Context, vm string) (hypervisor.Status, error) {
	if err := s.block(ctx, hypervisor.OpStatus, vm); err != nil {
		return hypervisor.Status{}, err
	}
	if err := s.fail(hypervisor.OpStatus, vm); err != nil {
		return hypervisor.Status{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st := hypervisor.Status{VM: vm, Power: hypervisor.PowerOff, Raw: "poweroff", Lock: hypervisor.LockUnlocked,
		CurrentSnapshot: s.snap[vm], StateChanged: time.Date(2026, 1, 2, 3, 4, 5, 6000000, time.UTC)}
	if s.running[vm] {
		st.Power, st.Raw, st.Lock = hypervisor.PowerRunning, "running", hypervisor.LockLocked
	}
	if vm == "odd" {
		st.Power, st.Raw, st.Lock = "levitating", "levitating", "half"
	}
	return st, nil
}

func (s *scripted) Start(ctx context.Context, vm string) error {
	if err := s.fail(hypervisor.OpStart, vm); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.running[vm] = true
	return nil
}

func (s *scripted) Stop(ctx context.Context, vm string, m hypervisor.StopMethod) error {
	if err := s.block(ctx, hypervisor.OpStop, vm); err != nil {
		return err
	}
	if err := s.fail(hypervisor.OpStop, vm); err != nil {
		return err
	}
	if m != hypervisor.StopPowerOff {
		return hypervisor.Unsupported(hypervisor.OpStop, vm)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.running[vm] = false
	return nil
}

func (s *scripted) Restore(ctx context.Context, vm, snapshot string) error {
	if err := s.fail(hypervisor.OpRestore, vm); err != nil {
		return err
	}
	if snapshot == "" {
		snapshot = "current"
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.snap[vm] = snapshot
	return nil
}

func (s *scripted) Exec(ctx context.Context, vm string, req hypervisor.ExecRequest) (hypervisor.ExecResult, error) {
	if err := s.fail(hypervisor.OpExec, vm); err != nil {
		return hypervisor.ExecResult{}, err
	}
	if req.Path == "print" {
		// A driver bug: output on the plugin's stdout and stderr after
		// the handshake, where nothing reads it as a log.
		fmt.Println(strings.Join(req.Args, " "))
		fmt.Fprintln(os.Stderr, "to stderr:", strings.Join(req.Args, " "))
		fmt.Print(strings.Repeat("x", 10000), "\n")
		fmt.Fprintln(fd1, "straight to file descriptor 1")
		return hypervisor.ExecResult{}, nil
	}
	if req.Path == "spawn" {
		// A process of the plugin's own, as a driver starts its
		// hypervisor's tools; it runs until killed.
		cmd := exec.Command("sleep", "1000")
		if err := cmd.Start(); err != nil {
			return hypervisor.ExecResult{}, err
		}
		go func() { _ = cmd.Wait() }()
		return hypervisor.ExecResult{Stdout: []byte(strconv.Itoa(cmd.Process.Pid))}, nil
	}
	return hypervisor.ExecResult{ExitCode: len(req.Args), Stdout: []byte(strings.Join(req.Args, " ")),
		Stderr: []byte(req.Timeout.String())}, nil
}

func (s *scripted) Watch(ctx context.Context, vm string) (<-chan hypervisor.Status, error) {
	if err := s.fail(hypervisor.OpWatch, vm); err != nil {
		return nil, err
	}
	ch := make(chan hypervisor.Status)
	go func() {
		defer close(ch)
		for i := range 3 {
			st := hypervisor.Status{VM: vm, Power: hypervisor.PowerOff, Raw: fmt.Sprint("step", i), Lock: hypervisor.LockUnlocked}
			select {
			case ch <- st:
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch, nil
}
