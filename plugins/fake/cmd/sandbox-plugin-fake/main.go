// Command sandbox-plugin-fake serves the fake hypervisor as a sandbox
// plugin. The host launches it; it is not meant to be run by hand.
package main

import (
	"github.com/sandboxhq/sandbox/plugins/fake"
	"github.com/sandboxhq/sandbox/sdk"
)

func main() {
	sdk.Serve(fake.New, sdk.WithConfigDocs("docs/configuration.md"))
}
