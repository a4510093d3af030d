// Package sdk is what a driver author imports to turn a hypervisor.Driver
// into a sandbox plugin: Serve for the plugin's main, Config for its
// settings, and the handshake and plugin sets the host dials with.
//
// The wire protocol (gRPC, generated from sdk/internal/pb) stays internal;
// this package's Go API is the stable surface.
package sdk
