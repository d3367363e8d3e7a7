#!/usr/bin/env bash
# The benchmark in one command (see README.md):
#   bench/run.sh [--quick] [flags of the Go harness, e.g. --keep, --versions 5]
# Scratch goes to $KURA_BENCH_WORK (default /var/tmp/kura-bench), results to bench/out/.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
work=${KURA_BENCH_WORK:-/var/tmp/kura-bench}
mirror=${KURA_BENCH_MIRROR:-http://deb.debian.org/debian}
export PATH=/usr/local/go/bin:$PATH

if [ "$(id -u)" != 0 ]; then
	echo "run.sh: must run as root (debootstrap, podman storage, drop_caches, mounts)" >&2
	exit 1
fi
missing=()
for t in debootstrap skopeo podman docker-registry runc script du ldd; do
	command -v "$t" >/dev/null || missing+=("$t")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "run.sh: missing ${missing[*]}; install: apt-get install -y debootstrap skopeo podman docker-registry runc" >&2
	exit 1
fi

mkdir -p "$work/bin"
(cd "$here" && go build -o "$work/bin/kura-bench" .)
# The kura binary is optional: the harness skips its hooks (with a message)
# when the build fails or the commands are not there yet.
kura=""
if (cd "$repo" && go build -o "$work/bin/kura" ./cmd/kura) 2>"$work/kura-build.log"; then
	kura="$work/bin/kura"
else
	echo "run.sh: building ./cmd/kura failed (see $work/kura-build.log); kura hooks will be skipped" >&2
fi

# stargz-snapshotter's daemon, only for a containerd comparison that uses it
# (-ctd-setups ...stargz...; heavy dependencies, built in this module).
case " $* " in
*stargz*) (cd "$here" && go build -o "$work/bin/stargz-grpc" ./cmd/stargz-grpc)
	set -- -stargz-grpc "$work/bin/stargz-grpc" "$@" ;;
esac

exec "$work/bin/kura-bench" -work "$work" -out "$here/out" -mirror "$mirror" -kura "$kura" "$@"
