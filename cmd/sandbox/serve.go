package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/sandboxhq/sandbox/core/api"
	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/engine"
	"github.com/sandboxhq/sandbox/core/fleet"
	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/core/lifecycle"
	"github.com/sandboxhq/sandbox/core/queue"
)

// serveFlags are `sandbox serve`'s options.
type serveFlags struct {
	listen   string
	database string
	host     string
}

func (a *app) serveCommand() *cobra.Command {
	var f serveFlags
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the analysis service: an HTTP API, a durable queue, metrics and a status page",
		Long: "serve accepts samples over HTTP and analyses them on this host's VMs, task after task, with a\n" +
			"queue that survives restarts: an SQLite file in the state directory, or a PostgreSQL database\n" +
			"(--database) that several hosts share, each working the tasks of the VMs it has.\n\n" +
			"Every /v1 call needs the bearer token of [server] token or " + config.TokenEnv + ".\n" +
			"Ctrl-C or SIGTERM stops it: running analyses are interrupted, their VMs cleaned, and their\n" +
			"tasks go back to the queue for the next start (or another host). See docs/server.md.",
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error { return a.serve(f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.listen, "listen", "", "serve on `ADDR` (default: [server] listen, else "+config.DefaultListen+")")
	fl.StringVar(&f.database, "database", "", "share the queue in this PostgreSQL `URL` (default: [queue] database, else SQLite in the state directory)")
	fl.StringVar(&f.host, "host", "", "this host's `NAME` among those sharing the queue (default: [queue] host, else the machine's name)")
	return cmd
}

func (a *app) serve(f serveFlags) error {
	if err := a.load(); err != nil {
		return err
	}
	if err := a.applyFlags(config.Flags{Listen: f.listen, Database: f.database, Host: f.host}); err != nil {
		return err
	}
	s, qs := a.cfg.Server, a.cfg.Queue
	if qs.Host == "" {
		return fmt.Errorf("this host needs a name (the machine has none): set [queue] host or --host")
	}
	if len(a.cfg.Profiles) == 0 {
		return fmt.Errorf("%s has no [profiles.NAME] table: declare the analyses the service runs (see docs/engine.md)", a.cfg.Path)
	}
	m, err := a.manager()
	if err != nil {
		return err
	}
	// One service per state directory: its leases and the jobs this host
	// name was running are its own.
	unlock, err := a.state.TryLock("serve.lock")
	if err != nil {
		return fmt.Errorf("another sandbox serve already uses the state directory %s; give each its own state_dir (and host name): %w", a.cfg.StateDir, err)
	}
	defer unlock()

	ctx := a.context()
	vms, err := a.hostVMs(ctx)
	if err != nil {
		return err
	}
	events := engine.NewEvents()
	e := engine.New(engine.Options{Lifecycle: m, Logger: a.log.Named("engine"), MaxStarting: a.cfg.Engine.MaxStarting, Events: events})
	var profiles []config.Profile
	for _, name := range a.cfg.ProfileNames() {
		profiles = append(profiles, a.cfg.Profiles[name])
	}
	pool, err := engine.NewPool(ctx, e, slices.Collect(maps.Values(vms)), profiles)
	if err != nil {
		return err
	}
	metrics := api.NewMetrics()
	q, err := queue.Open(ctx, queue.Options{
		Database: qs.Database, StateDir: a.cfg.StateDir, Host: qs.Host, Pool: pool, Lifecycle: m,
		OutDir: a.cfg.Engine.OutDir, DeadAfter: qs.DeadAfter, MaxAttempts: qs.MaxAttempts,
		ArtifactLimit: qs.ArtifactLimit, Retention: qs.Retention,
		Logger: a.log.Named("queue"), OnResult: metrics.Result,
	})
	if err != nil {
		return err
	}
	defer q.Close()
	started := make(chan struct{})
	srv, err := api.New(api.Options{Queue: q, Lifecycle: m, State: a.state, Server: s,
		Events: events, Metrics: metrics, Logger: a.log.Named("api")}, func() bool {
		select {
		case <-started:
			return true
		default:
			return false
		}
	})
	if err != nil {
		return err
	}
	defer srv.Close()
	ln, err := net.Listen("tcp", s.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w (set [server] listen or --listen)", s.Listen, err)
	}
	hs := srv.HTTPServer()
	served := make(chan error, 1)
	go func() { served <- hs.Serve(srv.Listener(ln)) }()
	if err := q.Start(ctx); err != nil {
		hs.Close()
		return fmt.Errorf("start the queue: %w", err)
	}
	close(started)
	where := "SQLite in " + a.cfg.StateDir
	if qs.Database != "" {
		where = "PostgreSQL"
	}
	fmt.Fprintf(a.errOut, "sandbox serve: listening on http://%s as host %s, queue in %s, VMs: %s\n",
		ln.Addr(), qs.Host, where, strings.Join(slices.Sorted(maps.Keys(vms)), ", "))

	select {
	case <-ctx.Done():
	case err := <-served:
		return fmt.Errorf("the HTTP server stopped: %w", err)
	}
	fmt.Fprintln(a.errOut, "sandbox serve: stopping; cleaning the VMs in use, their tasks go back to the queue")
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_ = hs.Shutdown(sctx)
	cancel()
	var bound time.Duration
	for _, vm := range vms {
		bound = max(bound, vm.Settings.CleanupTimeout)
	}
	qctx, cancel := context.WithTimeout(context.Background(), bound+30*time.Second)
	defer cancel()
	if err := q.Stop(qctx); err != nil {
		return fmt.Errorf("stop the queue: %w", err)
	}
	return nil
}

// hostVMs resolves the profiles' VMs that this host's plugins have; the
// others belong to other hosts sharing the queue.
func (a *app) hostVMs(ctx context.Context) (map[string]lifecycle.VM, error) {
	fl, err := a.fleet()
	if err != nil {
		return nil, err
	}
	out := map[string]lifecycle.VM{}
	for _, name := range a.cfg.ProfileNames() {
		for _, vm := range a.cfg.Profiles[name].VMs {
			if _, done := out[vm]; done {
				continue
			}
			plugin, d, err := fl.Resolve(ctx, vm, "")
			if err == nil {
				// A single plugin is taken for every VM's owner: ask it.
				_, err = d.Status(ctx, vm)
			}
			if errors.Is(err, fleet.ErrNoSuchVM) || errors.Is(err, hypervisor.ErrNotFound) {
				a.log.Info("VM not on this host", "vm", vm, "profile", name)
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("profile %s: %w", name, err)
			}
			out[vm] = lifecycle.VM{Name: vm, Plugin: plugin, Driver: d, Settings: a.cfg.LifecycleOf(vm)}
		}
	}
	return out, nil
}
