package sdk

import (
	"context"
	"errors"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	"github.com/sandboxhq/sandbox/sdk/internal/pb"
)

// Handshake is what host and plugin check before talking. The cookie only
// stops a plugin binary from being run by hand by mistake; it is not a
// security measure (the host's sha256 setting is).
var Handshake = plugin.HandshakeConfig{
	MagicCookieKey:   "SANDBOX_PLUGIN_COOKIE",
	MagicCookieValue: "hypervisor-driver-7c1e5b9a",
}

// PluginName is the name the hypervisor plugin is dispensed under.
const PluginName = "hypervisor"

// Protocol versions. The host offers both; a plugin serves the highest it
// supports, which go-plugin negotiates.
const (
	ProtocolV1 = 1
	ProtocolV2 = 2
)

// Environment variables the host sets for a plugin and Serve reads.
const (
	// EnvMaxProtocol caps the protocol a plugin serves ("1" serves only the
	// legacy contract). The --max-protocol flag does the same.
	EnvMaxProtocol = "SANDBOX_PLUGIN_MAX_PROTOCOL"
	// EnvLogLevel is the host's log level, so the plugin does not ship log
	// lines the host would drop.
	EnvLogLevel = "SANDBOX_PLUGIN_LOG_LEVEL"
	// EnvHostFD names the file descriptor of a pipe whose other end the
	// host holds; when it reads end-of-file the host is gone and the plugin
	// exits.
	EnvHostFD = "SANDBOX_PLUGIN_HOST_FD"
)

// ClientPluginSets is what a host passes as go-plugin's VersionedPlugins:
// both protocol versions, client side.
func ClientPluginSets() map[int]plugin.PluginSet {
	return map[int]plugin.PluginSet{
		ProtocolV1: {PluginName: &grpcPlugin{version: ProtocolV1}},
		ProtocolV2: {PluginName: &grpcPlugin{version: ProtocolV2}},
	}
}

func serverPluginSets(slot *driverSlot, maxProtocol int) map[int]plugin.PluginSet {
	sets := map[int]plugin.PluginSet{}
	for v := ProtocolV1; v <= min(maxProtocol, ProtocolV2); v++ {
		sets[v] = plugin.PluginSet{PluginName: &grpcPlugin{version: v, slot: slot}}
	}
	return sets
}

// grpcPlugin is the go-plugin glue for one protocol version: it registers
// the server on the plugin side and builds the client on the host side.
type grpcPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	version int
	slot    *driverSlot // nil on the host side
}

func (p *grpcPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	if p.slot == nil {
		return errors.New("sdk: plugin set built for a host used to serve")
	}
	switch p.version {
	case ProtocolV1:
		pb.RegisterHypervisorV1Server(s, &serverV1{slot: p.slot})
	default:
		pb.RegisterHypervisorV2Server(s, &serverV2{slot: p.slot})
	}
	return nil
}

func (p *grpcPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	switch p.version {
	case ProtocolV1:
		return &clientV1{c: pb.NewHypervisorV1Client(c)}, nil
	default:
		return &clientV2{c: pb.NewHypervisorV2Client(c)}, nil
	}
}
