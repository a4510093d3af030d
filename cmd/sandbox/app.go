package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"

	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/fleet"
	"github.com/sandboxhq/sandbox/core/host"
	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/core/lifecycle"
	"github.com/sandboxhq/sandbox/core/statedir"
)

// usageError is a mistake in the command line: exit status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{fmt.Sprintf(format, args...)} }

// errReported is returned by a command that already printed why it failed
// (in a table or as JSON), so main only sets the exit status.
var errReported = errors.New("failure already reported")

// isCobraUsageError recognizes cobra's own command-line errors.
func isCobraUsageError(err error) bool {
	msg := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand flag", "flag needs an argument",
		"invalid argument", "accepts ", "requires at least", "requires at most"} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}

// app holds what every command shares: global flags, the loaded
// configuration, the plugin host and the output streams.
type app struct {
	configPath string
	logLevel   string
	json       bool

	out, errOut io.Writer

	once      sync.Mutex
	cfg       *config.Config
	host      *host.Host
	log       hclog.Logger
	state     *statedir.Dir
	lifecycle *lifecycle.Manager

	ctx         context.Context
	stopSignals func()
	// signal is the first Ctrl-C or SIGTERM received, if any.
	signal os.Signal
}

func newApp(out, errOut io.Writer) *app {
	return &app{out: out, errOut: errOut}
}

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "sandbox",
		Short: "Drive analysis VMs through hypervisor plugins without leaving them locked, running or dirty",
		Long: "sandbox drives the VMs of malware-analysis and scanning systems through hypervisor plugins\n" +
			"(VirtualBox, a built-in fake, your own) and makes sure every VM ends off, unlocked and clean.",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if hclog.LevelFromString(a.logLevel) == hclog.NoLevel {
				return usagef("--log-level %q: want trace, debug, info, warn, error or off", a.logLevel)
			}
			return nil
		},
	}
	root.CompletionOptions.HiddenDefaultCmd = true
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &usageError{err.Error()} })
	f := root.PersistentFlags()
	f.StringVar(&a.configPath, "config", config.DefaultPath, "configuration `FILE`")
	f.StringVar(&a.logLevel, "log-level", "warn", "log `LEVEL` on stderr: trace, debug, info, warn, error, off")
	f.BoolVar(&a.json, "json", false, "print machine-readable JSON on stdout")
	root.AddCommand(a.pluginsCommand(), a.vmCommand(), a.runCommand(), a.serveCommand())
	root.AddCommand(a.conformanceCommand())
	return root
}

// context returns a context that ends on Ctrl-C or SIGTERM. A second
// signal exits at once: the plugins get a second to be killed, and any that
// is left notices its host is gone through its watchdog pipe and exits by
// itself.
func (a *app) context() context.Context {
	a.once.Lock()
	if a.ctx != nil {
		defer a.once.Unlock()
		return a.ctx
	}
	a.once.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		var sig os.Signal
		select {
		case sig = <-sigs:
		case <-done:
			return
		}
		a.once.Lock()
		a.signal = sig
		a.once.Unlock()
		fmt.Fprintln(a.errOut, "sandbox: interrupted; stopping (press Ctrl-C again to quit at once)")
		cancel()
		select {
		case <-sigs:
		case <-done:
			return
		}
		closed := make(chan struct{})
		go func() {
			a.close()
			close(closed)
		}()
		select {
		case <-closed:
		case <-time.After(time.Second):
		}
		os.Exit(130)
	}()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			signal.Stop(sigs)
			close(done)
			cancel()
		})
	}
	a.once.Lock()
	a.ctx, a.stopSignals = ctx, stop
	a.once.Unlock()
	return ctx
}

// load reads the configuration and prepares the plugin host, once.
func (a *app) load() error {
	a.once.Lock()
	defer a.once.Unlock()
	if a.cfg != nil {
		return nil
	}
	cfg, err := config.Load(a.configPath)
	if err != nil {
		return err
	}
	a.log = hclog.New(&hclog.LoggerOptions{
		Name:   "sandbox",
		Level:  hclog.LevelFromString(a.logLevel),
		Output: a.errOut,
		Color:  hclog.AutoColor,
	})
	a.cfg = cfg
	a.host = host.New(host.Options{Plugins: cfg.Plugins, File: cfg.Path, Data: cfg.Data, Logger: a.log})
	return nil
}

// applyFlags lays the command's flags over the loaded configuration; a
// flag whose value cannot be used is a usage error.
func (a *app) applyFlags(f config.Flags) error {
	var fe *config.FlagError
	if err := a.cfg.Apply(f); errors.As(err, &fe) {
		return usagef("%v", fe)
	} else if err != nil {
		return err
	}
	return nil
}

// close kills every plugin the command launched.
func (a *app) close() {
	a.once.Lock()
	h, stop := a.host, a.stopSignals
	a.once.Unlock()
	if stop != nil {
		stop()
	}
	if h != nil {
		h.Close() // safe to call twice: from main and from a second signal
	}
}

// fleet returns every configured plugin as one fleet.
func (a *app) fleet() (*fleet.Fleet, error) {
	if err := a.load(); err != nil {
		return nil, err
	}
	drivers := map[string]hypervisor.Driver{}
	for _, name := range a.host.Names() {
		p, err := a.host.Plugin(name)
		if err != nil {
			return nil, err
		}
		drivers[name] = p
	}
	assigned := map[string]string{}
	for name, vm := range a.cfg.VMs {
		assigned[name] = vm.Plugin
	}
	return fleet.New(drivers, assigned), nil
}

// emit prints v as JSON with --json, otherwise calls text.
func (a *app) emit(v any, text func(w io.Writer)) error {
	if a.json {
		enc := json.NewEncoder(a.out)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	text(a.out)
	return nil
}

// exactArgs is cobra.ExactArgs with a message naming the arguments.
func exactArgs(names ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != len(names) {
			return usagef("%s takes %d argument(s): %s (got %d)", cmd.CommandPath(), len(names), strings.Join(names, " "), len(args))
		}
		return nil
	}
}

// interruptedStatus is the exit status of a command cut short by a signal:
// 128 plus the signal's number, as a shell reports it (130 for Ctrl-C,
// 143 for SIGTERM); 0 when no signal came.
func (a *app) interruptedStatus() int {
	a.once.Lock()
	defer a.once.Unlock()
	switch a.signal {
	case nil:
		return 0
	case syscall.SIGTERM:
		return 143
	default:
		return 130
	}
}

// exitStatus is returned by a command that already said everything and
// only needs the process to exit with this status.
type exitStatus int

func (e exitStatus) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// noSubcommand is the Args of a command that only groups others: an
// argument there is a subcommand that does not exist.
func noSubcommand(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("unknown command %q for %q", args[0], cmd.CommandPath())
	}
	return nil
}

// cell makes s safe for one cell of a table: a control character (a tab,
// a newline in a VM's name) would break the columns, so such a string is
// shown quoted, with Go's escapes.
func cell(s string) string {
	if strings.IndexFunc(s, unicode.IsControl) < 0 {
		return s
	}
	return strconv.Quote(s)
}

// errorText renders an error for a JSON field; empty for nil.
func errorText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
