package host_test

import (
	"context"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc/health/grpc_health_v1"

	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/host"
	"github.com/sandboxhq/sandbox/sdk"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

// programs holds the fake plugin the benchmarks run, built on first use.
// The benchmarks use the real fake so that they measure what the CLI pays.
var programs plugintest.Cache

// fakeBinary is the fake plugin's executable.
func fakeBinary(b *testing.B) string {
	p, err := programs.Path("github.com/sandboxhq/sandbox/plugins/fake/cmd/sandbox-plugin-fake")
	if err != nil {
		b.Fatal(err)
	}
	return p
}

const benchConfig = "[plugins.fake.config.vms.vm1]\nstate = \"off\"\n"

// benchHost is a host of the real fake, with or without AutoMTLS.
func benchHost(b *testing.B, mtls bool) *host.Host {
	return host.New(host.Options{
		Plugins: map[string]config.Plugin{"fake": {StartTimeout: config.DefaultPluginStartTimeout, Path: fakeBinary(b), AutoMTLS: mtls}},
		File:    filepath.Join(b.TempDir(), "config.toml"),
		Data:    []byte(benchConfig),
		Logger:  hclog.NewNullLogger(),
	})
}

// bareClient launches the fake with go-plugin alone (with AutoMTLS or
// without) and returns a client for the gRPC health service go-plugin
// registers in every plugin: a round trip to an empty handler, the cost
// floor of any plugin call.
func bareClient(b *testing.B, mtls bool) (grpc_health_v1.HealthClient, func()) {
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  sdk.Handshake,
		VersionedPlugins: sdk.ClientPluginSets(),
		Cmd:              exec.Command(fakeBinary(b)),
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           hclog.NewNullLogger(),
		AutoMTLS:         mtls,
	})
	rpc, err := client.Client()
	if err != nil {
		b.Fatal(err)
	}
	conn := rpc.(*plugin.GRPCClient).Conn
	return grpc_health_v1.NewHealthClient(conn), client.Kill
}

// BenchmarkStatusVsBareRoundTrip interleaves a status call through the
// host and the fake driver with a bare go-plugin round trip over the same
// transport (AutoMTLS, the host's default), so that both see the same
// machine load; status/bare is the ratio the issue bounds at 1.25.
func BenchmarkStatusVsBareRoundTrip(b *testing.B) {
	h := benchHost(b, true)
	defer h.Close()
	p, err := h.Plugin("fake")
	if err != nil {
		b.Fatal(err)
	}
	health, kill := bareClient(b, true)
	defer kill()
	ctx := context.Background()
	req := &grpc_health_v1.HealthCheckRequest{Service: "plugin"}
	for range 200 { // warm both connections
		if _, err := p.Status(ctx, "vm1"); err != nil {
			b.Fatal(err)
		}
		if _, err := health.Check(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
	var bare, status time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if _, err := health.Check(ctx, req); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if _, err := p.Status(ctx, "vm1"); err != nil {
			b.Fatal(err)
		}
		bare += t1.Sub(t0)
		status += time.Since(t1)
	}
	b.ReportMetric(float64(bare.Nanoseconds())/float64(b.N), "bare-ns/call")
	b.ReportMetric(float64(status.Nanoseconds())/float64(b.N), "status-ns/call")
	b.ReportMetric(float64(status)/float64(bare), "status/bare")
}

// BenchmarkLaunchToFirstCall measures a cold plugin host's first status
// call (launch, handshake, configuration, the call) with AutoMTLS (the
// default) and without it, against go-plugin's own launch to its first
// round trip without TLS, interleaved in the same run: mtls/plain is what
// AutoMTLS costs a launch (docs/operations.md quotes it).
func BenchmarkLaunchToFirstCall(b *testing.B) {
	ctx := context.Background()
	req := &grpc_health_v1.HealthCheckRequest{Service: "plugin"}
	var mtls, plain, bare time.Duration
	launch := func(withMTLS bool) time.Duration {
		h := benchHost(b, withMTLS)
		p, _ := h.Plugin("fake")
		t0 := time.Now()
		if _, err := p.Status(ctx, "vm1"); err != nil {
			b.Fatal(err)
		}
		took := time.Since(t0)
		b.StopTimer()
		h.Close()
		b.StartTimer()
		return took
	}
	for i := 0; i < b.N; i++ {
		mtls += launch(true)
		plain += launch(false)

		t0 := time.Now()
		health, kill := bareClient(b, false)
		if _, err := health.Check(ctx, req); err != nil {
			b.Fatal(err)
		}
		bare += time.Since(t0)
		b.StopTimer()
		kill()
		b.StartTimer()
	}
	n := float64(b.N)
	b.ReportMetric(float64(mtls.Microseconds())/1000/n, "launch-ms")
	b.ReportMetric(float64(plain.Microseconds())/1000/n, "launch-nomtls-ms")
	b.ReportMetric(float64(bare.Microseconds())/1000/n, "bare-launch-ms")
	b.ReportMetric(float64(mtls)/float64(plain), "mtls/plain")
	b.ReportMetric(float64(plain)/float64(bare), "launch/bare")
}

// BenchmarkStatusMTLSVsPlain interleaves status calls through two hosts of
// the fake, one with AutoMTLS and one without: mtls/plain is what the
// encryption costs each call.
func BenchmarkStatusMTLSVsPlain(b *testing.B) {
	ctx := context.Background()
	var plugins [2]*host.Plugin
	for i, withMTLS := range []bool{true, false} {
		h := benchHost(b, withMTLS)
		defer h.Close()
		p, err := h.Plugin("fake")
		if err != nil {
			b.Fatal(err)
		}
		for range 200 { // launch and warm
			if _, err := p.Status(ctx, "vm1"); err != nil {
				b.Fatal(err)
			}
		}
		plugins[i] = p
	}
	var took [2]time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for j, p := range plugins {
			t0 := time.Now()
			if _, err := p.Status(ctx, "vm1"); err != nil {
				b.Fatal(err)
			}
			took[j] += time.Since(t0)
		}
	}
	b.ReportMetric(float64(took[0].Nanoseconds())/float64(b.N), "mtls-ns/call")
	b.ReportMetric(float64(took[1].Nanoseconds())/float64(b.N), "plain-ns/call")
	b.ReportMetric(float64(took[0])/float64(took[1]), "mtls/plain")
}
