package vboxmanage_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/host"
	"github.com/sandboxhq/sandbox/core/hypervisor"
)

// The test binary acts as a sandbox host in a process of its own when
// these are set, so that a test can kill that host as an operator's
// kill -9 or a crash would.
const (
	envHostConfig = "VBOXMANAGE_TEST_HOST_CONFIG"
	envHostPlugin = "VBOXMANAGE_TEST_HOST_PLUGIN"
)

// actAsHost launches the plugin with the configuration in file, starts a
// guest program that runs for ten minutes on vmName and a power-off of
// otherVM (which the test's world makes hang), prints the plugin's
// process id and waits to be killed.
func actAsHost(file, plugin string) int {
	data, err := os.ReadFile(file)
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	h := host.New(host.Options{
		Plugins: map[string]config.Plugin{"vbox": {AutoMTLS: true, StartTimeout: pluginStartTimeout, Path: plugin}},
		File:    file,
		Data:    data,
		// The plugin logs at the host's level: trace, so that it writes
		// as much as it can while its host is gone.
		Logger: hclog.New(&hclog.LoggerOptions{Level: hclog.Trace, Output: io.Discard}),
	})
	pl, err := h.Plugin("vbox")
	if err == nil {
		_, err = pl.Info(context.Background())
	}
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	go func() {
		_, _ = pl.Exec(context.Background(), vmName, hypervisor.ExecRequest{Path: "sleep", Args: []string{"600"}})
	}()
	go func() { _ = pl.Stop(context.Background(), otherVM, hypervisor.StopPowerOff) }()
	fmt.Printf("pid %d\n", pl.Pid())
	time.Sleep(time.Hour) // until the test kills this process
	return 0
}
