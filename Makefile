# netwatch: build, test, run and benchmark the whole pipeline on one machine.
#
#   make run [PCAP=file] [CAPTURE_INTERFACE=eth0] [DATABASE_URL=...]   start everything
#   make test                     every test of every module (installs what is missing)
#   make test-multihost           the fleet: credentials, a 3-node cluster losing a node, deploy/ checks
#   make build                    every binary into bin/ (and the dashboard)
#   make bench                    end-to-end throughput next to nfpcapd, argus and tshark
#   make lint | proto | setup | pg | clean

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := build

export NETWATCH_SHARED ?= $(abspath $(CURDIR)/../shared)
export DATABASE_URL ?= postgres://netwatch:netwatch@127.0.0.1:5432/netwatch?sslmode=disable
export CI ?=
export PCAP ?=
export CAPTURE_INTERFACE ?=

GO        ?= go
SERVICES  := agent enricher detector sink api
# Every Go module of the workspace (go.work), for test and lint.
MODULES    = $(shell $(GO) list -m -f '{{.Dir}}')
# Every main package under <service>/cmd/ that has code yet.
MAINS      = $(shell $(GO) list -f '{{if eq .Name "main"}}{{.ImportPath}}{{end}}' \
               $(foreach s,$(SERVICES),./$(s)/cmd/...) 2>/dev/null)
PROTOC_GEN_GO_VERSION := v1.36.12

.PHONY: all build web test test-multihost run bench proto clean lint setup pg help
all: build

help:
	@awk '/^#/ { sub(/^# ?/, ""); print; next } { exit }' Makefile

## setup: install what this machine lacks (Debian packages, bin/nats-server)
setup:
	@scripts/setup.sh

## pg: PostgreSQL reachable at DATABASE_URL, role and database created
pg:
	@scripts/pg.sh

## web: the dashboard (api/web/build.sh: npm ci + tsc + vite build into api/internal/web/dist, committed)
# Skipped when dist/.source-sha256 matches the sources (api/web/hash.mjs), or without node (the committed
# bundle is used); npm ci only when the lock file changed.
WEB_DIST := api/internal/web/dist/index.html
web:
	@if [ ! -f api/web/build.sh ]; then echo "build: no api/web/build.sh yet, dashboard skipped"; exit 0; fi; \
	if ! command -v node >/dev/null 2>&1; then echo "build: no node: using the committed dashboard bundle"; exit 0; fi; \
	if [ -f $(WEB_DIST) ] && [ "$$(cat api/internal/web/dist/.source-sha256 2>/dev/null)" = "$$(node api/web/hash.mjs)" ]; then \
	  echo "build: dashboard up to date"; exit 0; fi; \
	skip=; [ -f api/web/node_modules/.package-lock.json ] && [ api/web/node_modules/.package-lock.json -nt api/web/package-lock.json ] && skip=1; \
	echo "build: dashboard (api/web/build.sh)"; NETWATCH_WEB_SKIP_INSTALL=$$skip bash api/web/build.sh

## build: every binary into bin/
build: web
	@mkdir -p bin
	@mains="$(MAINS)"; \
	for s in $(SERVICES); do \
	  if ! ls $$s/cmd/$$s/*.go >/dev/null 2>&1; then echo "build: warning: $$s/cmd/$$s has no code yet, bin/$$s not built" >&2; fi; \
	done; \
	if [ -n "$$mains" ]; then \
	  echo "build: go build -trimpath -o bin/ $$(echo $$mains | tr '\n' ' ')"; \
	  $(GO) build -trimpath -o bin/ $$mains; \
	fi
	@echo "build: go build -trimpath -o bin/ ./ctl/cmd/netwatchctl"; $(GO) build -trimpath -o bin/ ./ctl/cmd/netwatchctl
	@ls bin/

## test: every test of every module, then the api's WebSocket tests again under -race; under CI=true a test that needs PostgreSQL fails, not skips
test: setup pg build
	@if [ ! -d api/web/node_modules/esbuild ] || [ ! -d api/web/node_modules/playwright-core ]; then \
	  echo "test: the dashboard's npm packages (api/web: npm ci) for its format and browser tests"; \
	  (cd api/web && npm ci --no-audit --no-fund --loglevel=error); fi
	@scripts/test.sh $(MODULES)
	@echo "=== api WebSocket tests under -race (50 clients, one stalled; keep-alive; slow clients)"
	@cd api && $(GO) test -count=1 -race -run 'TestStalledClient|TestLive|TestSlowClientToldWhatItMissed|TestStreamReplay|TestReplay' ./internal/server/

## test-multihost: the fleet on one machine: ctl/fleet (JWT credentials, 3-node cluster losing a node,
# and with root the network-namespace harness) and ctl/deploytest (deploy/ checked)
test-multihost: setup build
	@cd ctl && NETWATCH_MULTIHOST=1 $(GO) test -count=1 -timeout 20m -v ./fleet/ ./deploytest/

## lint: go vet every module
lint:
	@rc=0; for m in $(MODULES); do echo "vet: $$m"; (cd $$m && $(GO) vet ./...) || rc=1; done; exit $$rc

## run: the whole system on this machine; Ctrl-C stops it in order
run: setup build
	@NOBUILD=1 scripts/run.sh

## bench: end-to-end packets/s on the benchmark capture, with nfpcapd, argus and tshark
bench: setup pg build
	@bench/bench.sh

## proto: regenerate schema/pb from schema/proto (protoc + protoc-gen-go $(PROTOC_GEN_GO_VERSION))
proto:
	@command -v protoc >/dev/null || WITH_PROTO=1 scripts/setup.sh
	@GOBIN=$(CURDIR)/.cache/bin GOWORK=off $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	PATH="$(CURDIR)/.cache/bin:$$PATH" protoc -I schema/proto --go_out=. --go_opt=module=netwatch \
	  $$(cd schema/proto && find . -name '*.proto' | sed 's|^\./||')

## clean: binaries, run state and caches of this repository (not the module cache)
clean:
	rm -rf bin .run bench/out
	rm -rf .cache/bench .cache/bin
