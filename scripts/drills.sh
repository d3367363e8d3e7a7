#!/bin/sh
# Long-form reliability run (see docs/reliability.md): every fuzz target of the module for
# FUZZTIME each (default 10m), then the reliability drills with KURA_DRILLS=long (50 kill points
# per command, 15 rounds of concurrent pulls against gc, 200k-entry layer, the trailing-bomb test).
# The full-disk drill needs root (loop mount). Output goes to stdout; a failing step stops the run.
#
#   scripts/drills.sh                 # everything
#   FUZZTIME=30s scripts/drills.sh    # a quick pass
#   SKIP_FUZZ=1 scripts/drills.sh     # drills only
#   FUZZTIME=5s SKIP_DRILLS=1 scripts/drills.sh   # the bounded fuzzing make test runs
set -eu
cd "$(dirname "$0")/.."
FUZZTIME=${FUZZTIME:-10m}

if [ -z "${SKIP_FUZZ:-}" ]; then
	for pkg in $(go list ./...); do
		targets=$(go test -list '^Fuzz' "$pkg" 2>/dev/null | grep '^Fuzz' || true)
		for target in $targets; do
			echo "== fuzz $pkg $target ($FUZZTIME)"
			go test "$pkg" -run '^$' -fuzz "^${target}\$" -fuzztime "$FUZZTIME"
		done
	done
fi

if [ -z "${SKIP_DRILLS:-}" ]; then
	echo "== drills (KURA_DRILLS=long)"
	KURA_DRILLS=long go test ./reliability -count=1 -v -timeout 3h
fi
