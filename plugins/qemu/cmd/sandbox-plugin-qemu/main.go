// Command sandbox-plugin-qemu is the QEMU driver served as a sandbox
// plugin. The host launches it; see package qemu and docs/qemu.md.
package main

import (
	"github.com/sandboxhq/sandbox/plugins/qemu"
	"github.com/sandboxhq/sandbox/sdk"
)

func main() {
	sdk.Serve(qemu.New, sdk.WithConfigDocs("docs/qemu.md"))
}
