package lifecycle_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/host"
	"github.com/sandboxhq/sandbox/core/lifecycle"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

// Every test here drives the fake hypervisor as a real plugin process
// through the plugin host, the way the CLI does.
var fakeBin string

func TestMain(m *testing.M) {
	var programs plugintest.Cache
	code := func() int {
		defer programs.Close()
		var err error
		fakeBin, err = programs.Path("github.com/sandboxhq/sandbox/plugins/fake/cmd/sandbox-plugin-fake")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return m.Run()
	}()
	os.Exit(code)
}

// world is one test's fake hypervisor and the manager driving it.
type world struct {
	t       *testing.T
	host    *host.Host
	plugin  *host.Plugin
	manager *lifecycle.Manager
	journal string
	log     *lockedWriter
}

// fakeWorld launches a fake whose [plugins.fake.config] table is table
// (journal added); args go to the plugin (e.g. --max-protocol=1).
func fakeWorld(t *testing.T, table string, args ...string) *world {
	t.Helper()
	dir := t.TempDir()
	journal := filepath.Join(dir, "journal.jsonl")
	text := fmt.Sprintf("[plugins.fake.config]\njournal = %q\n%s", journal, table)
	logs := &lockedWriter{}
	logger := hclog.New(&hclog.LoggerOptions{Name: "sandbox", Level: hclog.Info, Output: logs})
	h := host.New(host.Options{
		Plugins: map[string]config.Plugin{"fake": {AutoMTLS: true, StartTimeout: config.DefaultPluginStartTimeout, Path: fakeBin, Args: args}},
		File:    filepath.Join(dir, "config.toml"),
		Data:    []byte(text),
		Logger:  logger,
	})
	t.Cleanup(h.Close)
	p, err := h.Plugin("fake")
	require.NoError(t, err)
	return &world{t: t, host: h, plugin: p, journal: journal, log: logs,
		manager: lifecycle.New(lifecycle.Options{Logger: logger})}
}

// vm addresses a VM of the world with settings derived from fast defaults.
func (w *world) vm(name string, adjust ...func(*config.Lifecycle)) lifecycle.VM {
	s := config.DefaultLifecycle()
	s.ACPITimeout = 2 * time.Second
	s.PowerOffTimeout = 2 * time.Second
	s.EmergencyTimeout = 2 * time.Second
	s.ReleaseTimeout = 5 * time.Second
	s.UnlockTimeout = 5 * time.Second
	s.RestoreTimeout = 10 * time.Second
	s.SettleDelay = 200 * time.Millisecond
	for _, f := range adjust {
		f(&s)
	}
	return lifecycle.VM{Name: name, Plugin: "fake", Driver: w.plugin, Settings: s}
}

// entry is one line of the fake's journal.
type entry struct {
	Op       string `json:"op"`
	VM       string `json:"vm"`
	Method   string `json:"method"`
	Snapshot string `json:"snapshot"`
	Via      string `json:"via"`
	Outcome  string `json:"outcome"`
	Time     time.Time
}

// sent returns what reached the fake hypervisor, as "op[ method]" words.
func (w *world) sent() []string {
	w.t.Helper()
	f, err := os.Open(w.journal)
	if os.IsNotExist(err) {
		return nil
	}
	require.NoError(w.t, err)
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var e entry
		require.NoError(w.t, json.Unmarshal(sc.Bytes(), &e))
		word := e.Op
		if e.Method != "" {
			word += " " + e.Method
		}
		if e.Outcome != "" && e.Outcome != "ok" {
			word += " (" + e.Outcome + ")"
		}
		out = append(out, word)
	}
	return out
}
