// Command sandbox-plugin-vboxmanage is the VirtualBox driver served as a
// sandbox plugin. The host launches it; see package vboxmanage for what it
// does and its configuration.
package main

import (
	"github.com/sandboxhq/sandbox/plugins/vboxmanage"
	"github.com/sandboxhq/sandbox/sdk"
)

func main() {
	sdk.Serve(vboxmanage.New, sdk.WithConfigDocs("docs/vboxmanage.md"))
}
