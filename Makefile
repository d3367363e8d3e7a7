# Kura — build, test, demo. `make test` is what CI runs (see .ci/run).
GO ?= go
export PATH := /usr/local/go/bin:$(PATH)
# A pipe fails when go test does, not only when the last command does.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec

.PHONY: all setup build test test-unit test-interop test-race bench-smoke fuzz-smoke drills demo clean

# The test targets run go test -json through internal/testcheck, which prints go test's usual
# ok/FAIL lines and fails the run on any failed *or skipped* test, listing each skip and its reason.
# KURA_TEST_STRICT=1 makes testkit.Skip fail the test itself, so a plain go test agrees.
TESTCHECK := $(CURDIR)/bin/testcheck
test-unit test-interop test-race: export KURA_TEST_STRICT := 1
test-unit test-interop test-race: $(TESTCHECK)

$(TESTCHECK): $(wildcard internal/testcheck/*.go)
	$(GO) build -o $@ ./internal/testcheck

# Packages that run goroutines (parallel fetches, uploads, frame compression, concurrent imports and
# store locks, progress from workers): go test -race runs them as a step of its own.
RACE_PKGS := ./chunked/... ./pull/... ./push/... ./registry/... ./store/... ./ociimport/... ./progress/...
# Left out of the race step only (they run in test-unit): measurements and kill drills that are
# single-threaded where it counts and take minutes under -race (dedup of ten /usr/bin trees, kill -9
# of imports, the 512 MiB memory bound).
RACE_SKIP := ^(TestDedupVariants|TestCrashDuringImport|TestConvertMemoryBounded)$$

all: build

# Installs Debian packages and Go modules the tests and demo need (idempotent; root on a fresh machine).
setup:
	bash scripts/setup.sh

build:
	$(GO) build -o bin/kura ./cmd/kura

# The whole test suite: unit, conformance, real registry, real mounts, interop with the reference compressor.
test: setup
	$(MAKE) test-unit test-interop test-race bench-smoke

test-unit:
	@unformatted=$$("$$($(GO) env GOROOT)/bin/gofmt" -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
		if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 40m -json ./... | $(TESTCHECK)
	cd bench && $(GO) vet ./... && $(GO) test -count=1 -json ./... | $(TESTCHECK)

test-interop:
	cd interop && $(GO) vet ./... && $(GO) test -count=1 -timeout 20m -json ./... | $(TESTCHECK)

test-race:
	@start=$$(date +%s); \
	$(GO) test -race -count=1 -timeout 30m -skip '$(RACE_SKIP)' -json $(RACE_PKGS) | $(TESTCHECK); \
	echo "race step: $$(( $$(date +%s) - start ))s"

# Microbenchmarks run once each, as a smoke test; the figures in BENCHMARKS.md come from the harnesses.
bench-smoke:
	$(GO) test -run '^$$' -bench . -benchtime 1x ./chunked ./verity
	$(GO) test -run '^$$' -bench 'BuildCS9/kura' -benchtime 1x ./composefs/dump
	$(GO) test -run '^$$' -bench 'PullUpdate|PullFirst' -benchtime 1x ./pull

# Every fuzz target for a few seconds (the seed corpora already run in test-unit). Not part of
# make test: go's fuzzer sometimes ends a very short run with "context deadline exceeded".
fuzz-smoke:
	FUZZTIME=5s SKIP_DRILLS=1 sh scripts/drills.sh

# The long form of the reliability drills: hours of fuzzing and 50 kill points per command.
drills:
	sh scripts/drills.sh

# The main job end to end, offline: local registry, two sample images, push, pull, savings, mount (root).
demo: setup build
	bash scripts/demo.sh

clean:
	rm -rf bin
