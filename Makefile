# vigil: run the dev stack, build, test, bench and lint every module of go.work.
#
#   make deps    install what is missing (redis-server, PostgreSQL, nats CLI, staticcheck, Jaeger, Prometheus)
#   make run     the local dev stack (deploy/devstack): NATS (with auth: nats contexts vigil
#                and demo; make run AUTH=0 runs it open), Redis, Postgres and the services;
#                make run TLS=1 runs NATS, Redis and Postgres with TLS only (certificates in .run/tls);
#                it installs only what it needs (Jaeger only with TRACING=1, Prometheus with OBSERVE=1)
#   make build   every service binary (and vigilctl) into bin/
#   make test    every module's tests with the race detector, against real servers
#   make test-scaleout  the scale-out scenarios too heavy for make test (build tag scaleout)
#   make test-drill     the backup/restore drill: back up a running stack, destroy it, restore (build tag drill)
#   make test-ha the high-availability tests (build tag ha): NATS, Redis and PostgreSQL
#                each killed and restarted under the services, and the 3-host kill
#                rotation (needs root for network namespaces; skipped without)
#   make test-ha-rotation  the 3-host kill rotation alone
#   make test-upgrade   mixed versions: the previous release's binaries beside this tree's (build tag upgrade)
#   make fuzz    every fuzz target for FUZZTIME (default 20s) each
#   make bench   the benchmark runner, or every module's Go benchmarks
#   make lint    go vet, staticcheck, gofmt
#   make clean   remove bin/ and .run/ (the dev stack's data)

SHELL := /bin/bash
GO ?= go
# The machine has 2 cores: build and test 2 packages at a time.
PARALLEL := -p 2
# Extra flags for go test, e.g. make test GOTESTFLAGS=-v.
GOTESTFLAGS ?=
# Every module of go.work.
PACKAGES := ./pkg/... ./services/feed/... ./services/indicators/... \
	./services/alerts/... ./services/control/... ./deploy/... ./bench/... ./e2e/...
SERVICES := feed indicators alerts control
# The commit the binaries report in their micro service metadata.
LDFLAGS := -X vigil.dev/pkg/service.Revision=$(shell git rev-parse --short HEAD 2>/dev/null || echo dev)

# Tools that deps installs with go install land here.
export PATH := $(PATH):$(shell $(GO) env GOPATH)/bin

.PHONY: deps run build test test-scaleout test-drill test-ha test-ha-rotation test-upgrade fuzz bench lint clean

deps:
	bash deploy/scripts/deps.sh

# Built, then run directly, so Ctrl-C and SIGTERM reach it (go run does not
# forward them). make run TRACING=1 also builds (once) and runs Jaeger.
run:
	@bash deploy/scripts/deps.sh --run
	@mkdir -p bin
	@$(GO) build -o bin/devstack ./deploy/devstack
	@bin/devstack

build:
	@mkdir -p bin
	@for s in $(SERVICES); do \
		if [ "$$($(GO) list -f '{{.Name}}' ./services/$$s 2>/dev/null)" = main ]; then \
			echo "$(GO) build -o bin/vigil-$$s ./services/$$s"; \
			$(GO) build $(PARALLEL) -ldflags "$(LDFLAGS)" -o bin/vigil-$$s ./services/$$s || exit 1; \
		else \
			echo "build: services/$$s has no main package yet, skipped"; \
		fi; \
	done
	@if [ -d services/control/cmd/vigilctl ]; then \
		echo "$(GO) build -o bin/vigilctl ./services/control/cmd/vigilctl"; \
		$(GO) build $(PARALLEL) -o bin/vigilctl ./services/control/cmd/vigilctl; \
	fi

# The rotation under running services runs without -race: it reloads an
# embedded nats-server, whose own unlocked read of its options the race
# detector flags (deploy/nats/rotation_test.go).
test: deps
	$(GO) test $(PARALLEL) -race -count=1 -timeout 14m $(GOTESTFLAGS) $(PACKAGES)
	$(GO) test $(PARALLEL) -count=1 -timeout 5m -run 'TestRotationUnderRunningServices' $(GOTESTFLAGS) ./deploy/nats/

# The scale-out scenarios (issue 13, 4a): three instances over 1,000
# series, minutes on a loaded machine, so not part of make test.
test-scaleout: deps
	$(GO) test $(PARALLEL) -race -count=1 -timeout 20m -tags scaleout -run 'TestScaleOut' $(GOTESTFLAGS) ./services/indicators/... ./services/alerts/...

# The backup/restore drill (issue 20, 1; docs/deploy.md "Backup and
# restore"): a whole stack backed up, destroyed and restored, a minute or
# more on a loaded machine, so not part of make test.
test-drill: deps
	$(GO) test $(PARALLEL) -race -count=1 -timeout 10m -tags drill -run 'TestBackupRestoreDrill|TestRestoreIntoACluster' $(GOTESTFLAGS) ./e2e/ ./services/control/internal/backup/

# The high-availability tests (issue 14, items 5-7): each dependency killed
# with SIGKILL and restarted under the running services, and three hosts
# (network namespaces, root) killed in turn; minutes, so not in make test.
test-ha: deps
	$(GO) test $(PARALLEL) -count=1 -timeout 25m -tags ha -run 'Restart$$|TestKillRotation' $(GOTESTFLAGS) ./deploy/multihost/

# The 3-host kill rotation alone (issue 14, 5; docs/deploy.md "High
# availability").
test-ha-rotation: deps
	$(GO) test -count=1 -timeout 25m -tags ha -run 'TestKillRotation' $(GOTESTFLAGS) ./deploy/multihost/

# The rolling-upgrade test (issue 20, 2; docs/deploy.md "Rolling
# upgrades"): one instance of every service built from an older commit
# (UPGRADE_FROM, default the test's upgradeFrom; built once into
# .run/revisions/<commit>/bin, minutes the first time) beside one built
# from this tree, through a command sequence; not part of make test.
UPGRADE_FROM ?=
test-upgrade: deps
	VIGIL_UPGRADE_FROM=$(UPGRADE_FROM) $(GO) test $(PARALLEL) -count=1 -timeout 20m -tags upgrade -run 'TestMixedVersions' $(GOTESTFLAGS) ./e2e/

# make fuzz runs every fuzz target (func FuzzX in a _test.go of pkg or
# services) for FUZZTIME each, one after the other (go test -fuzz takes one
# target at a time); new failing inputs land in the package's
# testdata/fuzz/FuzzX, to be committed. The seeds (f.Add and testdata/fuzz)
# run as ordinary tests in make test.
FUZZTIME ?= 20s

fuzz:
	@for f in $$(grep -rl --include='*_test.go' '^func Fuzz' pkg services); do \
		dir=$$(dirname $$f); \
		for t in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' $$f); do \
			echo "$(GO) test -run '^$$' -fuzz '^$$t$$' -fuzztime $(FUZZTIME) ./$$dir"; \
			$(GO) test -run '^$$' -fuzz "^$$t\$$" -fuzztime $(FUZZTIME) ./$$dir || exit 1; \
		done; \
	done

# Extra flags for the benchmark runner, e.g. make bench BENCHFLAGS="-only ack,pipeline -profile".
BENCHFLAGS ?=

bench:
	@if [ -d bench/cmd/bench ]; then \
		echo "$(GO) run ./bench/cmd/bench $(BENCHFLAGS)"; \
		$(GO) run ./bench/cmd/bench $(BENCHFLAGS); \
	else \
		echo "$(GO) test -run '^$$' -bench . -benchmem $(PACKAGES)"; \
		$(GO) test $(PARALLEL) -run '^$$' -bench . -benchmem $(PACKAGES); \
	fi

lint:
	$(GO) vet $(PARALLEL) $(PACKAGES)
	@command -v staticcheck >/dev/null || bash deploy/scripts/deps.sh
	staticcheck $(PACKAGES)
	@unformatted=$$(gofmt -l pkg services deploy); \
	if [ -n "$$unformatted" ]; then echo "gofmt -l: these files need gofmt -w:"; echo "$$unformatted"; exit 1; fi

clean:
	rm -rf bin .run
