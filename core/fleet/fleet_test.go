package fleet_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/fleet"
	"github.com/sandboxhq/sandbox/core/hypervisor"
)

// lister is a driver that only lists.
type lister struct {
	hypervisor.Unimplemented
	vms []string
	err error
}

func (l lister) Info(context.Context) (hypervisor.Info, error) { return hypervisor.Info{}, nil }
func (l lister) Status(context.Context, string) (hypervisor.Status, error) {
	return hypervisor.Status{}, nil
}
func (l lister) Start(context.Context, string) error                       { return nil }
func (l lister) Stop(context.Context, string, hypervisor.StopMethod) error { return nil }
func (l lister) ListVMs(context.Context) ([]hypervisor.VM, error) {
	if l.err != nil {
		return nil, l.err
	}
	out := make([]hypervisor.VM, len(l.vms))
	for i, n := range l.vms {
		out[i] = hypervisor.VM{Name: n, Power: hypervisor.PowerOff}
	}
	return out, nil
}

// legacy cannot list, like a protocol 1 plugin.
type legacy struct{ lister }

func (legacy) ListVMs(context.Context) ([]hypervisor.VM, error) {
	return nil, hypervisor.Unsupported(hypervisor.OpList, "")
}

func newFleet() *fleet.Fleet {
	return fleet.New(map[string]hypervisor.Driver{
		"a":      lister{vms: []string{"vm1", "shared"}},
		"b":      lister{vms: []string{"vm2", "shared"}},
		"old":    legacy{},
		"broken": lister{err: hypervisor.NewError(hypervisor.CodeUnavailable, "list", "", "VBoxSVC is not running")},
	}, map[string]string{"vm3": "old", "pinned": "b"})
}

func TestListShowsEveryPluginAndKeepsGoingPastAFailure(t *testing.T) {
	entries, errs := newFleet().List(context.Background())
	var got []string
	for _, e := range entries {
		got = append(got, e.Plugin+"/"+e.Name)
	}
	assert.Equal(t, []string{"a/vm1", "a/shared", "b/vm2", "b/shared", "old/vm3"}, got)
	require.Len(t, errs, 1)
	var pe *fleet.PluginError
	require.ErrorAs(t, errs[0], &pe)
	assert.Equal(t, "broken", pe.Plugin)
	assert.ErrorIs(t, errs[0], hypervisor.ErrUnavailable)
	assert.False(t, entries[4].Listed, "a VM known only from the configuration says so")
}

func TestResolve(t *testing.T) {
	f := newFleet()
	for _, tc := range []struct {
		name, vm, plugin, want, errText string
	}{
		{name: "explicit plugin wins", vm: "vm1", plugin: "b", want: "b"},
		{name: "configured assignment", vm: "pinned", want: "b"},
		{name: "found by listing", vm: "vm2", want: "b"},
		{name: "assigned to a plugin that cannot list", vm: "vm3", want: "old"},
		{name: "in two plugins", vm: "shared", errText: "exists in several plugins (a, b)"},
		{name: "nowhere", vm: "ghost", errText: `VM "ghost": no plugin has this VM`},
		{name: "unknown plugin", vm: "vm1", plugin: "zzz", errText: `no plugin named "zzz"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, d, err := f.Resolve(context.Background(), tc.vm, tc.plugin)
			if tc.errText != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.errText)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
			assert.NotNil(t, d)
		})
	}
}

func TestResolveNowhereCarriesThePluginFailures(t *testing.T) {
	_, _, err := newFleet().Resolve(context.Background(), "ghost", "")
	assert.ErrorIs(t, err, fleet.ErrNoSuchVM)
	assert.ErrorIs(t, err, hypervisor.ErrUnavailable, "a plugin that could not answer may be the one that has it")
}

func TestASinglePluginOwnsEveryVM(t *testing.T) {
	f := fleet.New(map[string]hypervisor.Driver{"only": legacy{}}, map[string]string{"x": ""})
	name, _, err := f.Resolve(context.Background(), "anything", "")
	require.NoError(t, err)
	assert.Equal(t, "only", name)
	entries, errs := f.List(context.Background())
	assert.Empty(t, errs)
	require.Len(t, entries, 1)
	assert.Equal(t, "x", entries[0].Name)
}
