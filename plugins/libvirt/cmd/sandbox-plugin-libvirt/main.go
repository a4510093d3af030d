// Command sandbox-plugin-libvirt is the libvirt driver served as a sandbox
// plugin. The host launches it; see package libvirt and docs/libvirt.md.
package main

import (
	"github.com/sandboxhq/sandbox/plugins/libvirt"
	"github.com/sandboxhq/sandbox/sdk"
)

func main() {
	sdk.Serve(libvirt.New, sdk.WithConfigDocs("docs/libvirt.md"))
}
