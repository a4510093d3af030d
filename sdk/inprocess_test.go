package sdk_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/configfile"
	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk"
)

// echo is a driver that answers from its configuration and remembers
// whether it was closed.
type echo struct {
	hypervisor.Unimplemented
	greeting string
	closed   *atomic.Bool
}

func (e *echo) Info(context.Context) (hypervisor.Info, error) {
	return hypervisor.Info{Name: e.greeting, ContractVersion: 2, Capabilities: hypervisor.NewCapabilities(hypervisor.CapWatch)}, nil
}

func (e *echo) Status(ctx context.Context, vm string) (hypervisor.Status, error) {
	if vm == "slow" {
		<-ctx.Done()
		return hypervisor.Status{}, hypervisor.FromContext(ctx, hypervisor.OpStatus, vm)
	}
	if vm != "a" {
		return hypervisor.Status{}, hypervisor.NewError(hypervisor.CodeNotFound, hypervisor.OpStatus, vm, "no %s", vm)
	}
	return hypervisor.Status{VM: vm, Power: hypervisor.PowerOff, Raw: "off", Lock: hypervisor.LockUnlocked}, nil
}

func (e *echo) Start(context.Context, string) error { return nil }

func (e *echo) Stop(context.Context, string, hypervisor.StopMethod) error { return nil }

func (e *echo) Watch(ctx context.Context, vm string) (<-chan hypervisor.Status, error) {
	ch := make(chan hypervisor.Status, 1)
	ch <- hypervisor.Status{VM: vm, Power: hypervisor.PowerOff, Raw: "off"}
	go func() {
		<-ctx.Done()
		close(ch)
	}()
	return ch, nil
}

func (e *echo) Close() error {
	e.closed.Store(true)
	return nil
}

func echoFactory(closed *atomic.Bool) sdk.Factory {
	return func(cfg sdk.Config, _ hclog.Logger) (hypervisor.Driver, error) {
		var c struct {
			Greeting string `toml:"greeting"`
		}
		if err := cfg.Decode(&c); err != nil {
			return nil, err
		}
		return &echo{greeting: c.Greeting, closed: closed}, nil
	}
}

func serve(t *testing.T, config string, opts ...sdk.ServeOption) (*sdk.InProcess, *atomic.Bool) {
	t.Helper()
	closed := &atomic.Bool{}
	p, err := sdk.ServeInProcess(context.Background(), echoFactory(closed),
		sdk.ConfigFromTOML("echo", "/etc/sandbox/config.toml", []byte(config)), nil, opts...)
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	return p, closed
}

func TestServeInProcessCrossesTheWire(t *testing.T) {
	p, closed := serve(t, "[plugins.echo.config]\ngreeting = \"hello\"\n")
	ctx := context.Background()
	assert.Equal(t, sdk.ProtocolV2, p.Protocol())
	info, err := p.Info(ctx)
	require.NoError(t, err)
	assert.Equal(t, "hello", info.Name, "the configuration reached the factory")

	_, err = p.Status(ctx, "b")
	var he *hypervisor.Error
	require.ErrorAs(t, err, &he)
	assert.Equal(t, hypervisor.CodeNotFound, he.Code)
	assert.Equal(t, "no b", he.Message)

	assert.True(t, hypervisor.IsUnsupported(p.Unlock(ctx, "a")))

	dctx, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
	defer cancel()
	begun := time.Now()
	_, err = p.Status(dctx, "slow")
	assert.Equal(t, hypervisor.CodeTimeout, hypervisor.CodeOf(err))
	assert.Less(t, time.Since(begun), 2*time.Second)

	wctx, wcancel := context.WithCancel(ctx)
	ch, err := p.Watch(wctx, "a")
	require.NoError(t, err)
	assert.Equal(t, hypervisor.PowerOff, (<-ch).Power)
	wcancel()
	for range ch {
	}

	require.NoError(t, p.Close())
	assert.True(t, closed.Load(), "Close closes the driver")
	require.NoError(t, p.Close(), "twice is fine")
	_, err = p.Status(ctx, "a")
	assert.Error(t, err, "closed")
}

func TestServeInProcessSpeaksTheLegacyProtocol(t *testing.T) {
	p, _ := serve(t, "", sdk.WithMaxProtocol(sdk.ProtocolV1))
	ctx := context.Background()
	assert.Equal(t, sdk.ProtocolV1, p.Protocol())
	info, err := p.Info(ctx)
	require.NoError(t, err)
	assert.Equal(t, hypervisor.NewCapabilities(hypervisor.V1Capabilities...), info.Capabilities)
	st, err := p.Status(ctx, "a")
	require.NoError(t, err)
	assert.Equal(t, hypervisor.LockUnknown, st.Lock, "protocol 1 reports no locks")
	_, err = p.Watch(ctx, "a")
	assert.True(t, hypervisor.IsUnsupported(err))
}

func TestServeInProcessReportsAConfigurationTheFactoryRejects(t *testing.T) {
	_, err := sdk.ServeInProcess(context.Background(), echoFactory(&atomic.Bool{}),
		sdk.ConfigFromTOML("echo", "/etc/sandbox/config.toml", []byte("[plugins.echo.config]\ngreting = 1\n")), nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "/etc/sandbox/config.toml:2: plugins.echo.config.greting: unknown key")
	var ce *configfile.Error
	assert.False(t, errors.As(err, &ce), "the error crossed the wire as a contract error")
	assert.Equal(t, hypervisor.CodeFailed, hypervisor.CodeOf(err))
}

func TestAnUnknownKeyPointsToWhereThePluginDocumentsItsTable(t *testing.T) {
	typo := sdk.ConfigFromTOML("echo", "config.toml", []byte("[plugins.echo.config]\ngreting = 1\n"))
	_, err := sdk.ServeInProcess(context.Background(), echoFactory(&atomic.Bool{}), typo, nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "config.toml:2: plugins.echo.config.greting: unknown key; "+
		"check its spelling against the plugin's own documentation")
	assert.NotContains(t, err.Error(), "docs/configuration.md", "sandbox's docs do not document a third party's table")

	_, err = sdk.ServeInProcess(context.Background(), echoFactory(&atomic.Bool{}), typo, nil,
		sdk.WithConfigDocs("https://example.com/echo#settings"))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "unknown key; check its spelling against https://example.com/echo#settings")
}
