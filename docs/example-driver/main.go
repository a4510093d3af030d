// Command sandbox-plugin-procvm is the example driver of
// docs/plugin-authoring.md: a sandbox plugin whose "VMs" are plain local
// processes. A VM is a command; starting it runs the command in the VM's
// own directory (its "disk"), stopping it signals the process, and a
// snapshot is a directory the disk is copied back from.
//
// It exists to be read, and to show that the public SDK is enough to write
// a driver that passes the conformance suite. It isolates nothing: the
// "guest" is the host, inside the VM's directory. It runs on Linux and the
// other Unixes (process states come from /proc where there is one).
package main

import "github.com/sandboxhq/sandbox/sdk"

func main() {
	// Serve does the rest: the handshake with sandbox, the protocol
	// negotiation, the configuration hand-off (New gets it), the gRPC
	// server and exiting when sandbox goes away.
	sdk.Serve(New)
}
