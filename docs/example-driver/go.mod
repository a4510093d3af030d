module example.com/sandbox-procvm

go 1.26.8

require (
	github.com/hashicorp/go-hclog v1.6.3
	github.com/sandboxhq/sandbox v0.0.0-00010101000000-000000000000
)

require (
	github.com/BurntSushi/toml v1.6.0 // indirect
	github.com/cenkalti/backoff/v5 v5.0.3 // indirect
	github.com/fatih/color v1.13.0 // indirect
	github.com/golang/protobuf v1.5.4 // indirect
	github.com/hashicorp/go-plugin v1.8.0 // indirect
	github.com/hashicorp/yamux v0.1.2 // indirect
	github.com/mattn/go-colorable v0.1.12 // indirect
	github.com/mattn/go-isatty v0.0.24 // indirect
	github.com/oklog/run v1.1.0 // indirect
	golang.org/x/net v0.62.0 // indirect
	golang.org/x/sys v0.50.0 // indirect
	golang.org/x/text v0.44.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20261110000943-09e21b237f2c // indirect
	google.golang.org/grpc v1.85.0 // indirect
	google.golang.org/protobuf v1.36.12 // indirect
	pgregory.net/rapid v1.3.0 // indirect
)

// The example is built against the SDK of this checkout, so that it never
// drifts from it. A driver of your own requires a commit of sandbox
// (go get github.com/sandboxhq/sandbox@COMMIT) until sandbox has release
// tags: docs/plugin-authoring.md, "1. The module".
replace github.com/sandboxhq/sandbox => ../..
