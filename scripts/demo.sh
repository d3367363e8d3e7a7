#!/usr/bin/env bash
# Kura's main job end to end, offline, on one machine:
#   a local registry (Debian docker-registry on loopback), two versions of a sample image made from
#   files already on the machine, push of both as zstd:chunked, a pull of version 1 and then of
#   version 2 into a fresh store, the savings report, and (as root) a composefs mount of version 2,
#   then (as root, with podman) podman pulling and running both versions through `kura layer-store
#   serve` against plain podman (scripts/demo-layerstore.sh).
# Usage: scripts/demo.sh  (make demo builds bin/kura and installs packages first)
set -euo pipefail
cd "$(dirname "$0")/.."
kura=${KURA:-$PWD/bin/kura}
sample=${DEMO_SAMPLE:-/usr/local/go/src}
work=$(mktemp -d /tmp/kura-demo.XXXXXX)
registry_pid=""
mounted=""

cleanup() {
	if [ -n "$mounted" ]; then "$kura" --root "$work/node" umount "$mounted" 2>/dev/null || true; fi
	if [ -n "$registry_pid" ]; then kill "$registry_pid" 2>/dev/null || true; wait "$registry_pid" 2>/dev/null || true; fi
	rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Starting a registry on loopback"
port=$(( 20000 + RANDOM % 20000 ))
cat >"$work/registry.yml" <<YML
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $work/registry
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
YML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 1 100); do
	if curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null 2>&1; then break; fi
	if ! kill -0 "$registry_pid" 2>/dev/null; then cat "$work/registry.log"; exit 1; fi
	sleep 0.1
done
curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null
echo "docker-registry at 127.0.0.1:$port"
reg="127.0.0.1:$port"

step "Making two versions of a sample image from $sample"
mkdir -p "$work/v1" "$work/v2"
cp -a "$sample/." "$work/v1/"
cp -a "$sample/." "$work/v2/"
# Version 2 changes about 5% of the files and adds a few new ones.
find "$work/v2" -type f -name '*.go' | sort | awk 'NR % 20 == 0' >"$work/changed.txt"
while read -r f; do
	printf '\n// changed in version 2\n' >>"$f"
done <"$work/changed.txt"
changed=$(head -n 1 "$work/changed.txt")
changed=${changed#"$work/v2/"}
head -c 2000000 /dev/urandom >"$work/v2/new-asset.bin"
tar -C "$work/v1" --sort=name -cf "$work/v1.tar" .
tar -C "$work/v2" --sort=name -cf "$work/v2.tar" .
rm -rf "$work/v1" "$work/v2"
ls -l "$work/v1.tar" "$work/v2.tar"

step "Importing both into a build store and pushing them as zstd:chunked"
"$kura" --root "$work/build" import "$work/v1.tar" demo:v1
"$kura" --root "$work/build" import "$work/v2.tar" demo:v2
"$kura" --root "$work/build" push demo:v1 "docker://$reg/demo:v1" --tls-verify=false
"$kura" --root "$work/build" push demo:v2 "docker://$reg/demo:v2" --tls-verify=false

step "Pulling version 1 into a fresh node store"
"$kura" --root "$work/node" pull "docker://$reg/demo:v1" --tls-verify=false

step "Pulling version 2: only the changed files travel"
"$kura" --root "$work/node" --json pull "docker://$reg/demo:v2" --tls-verify=false >"$work/pull-v2.json"
jq -r '"blob bytes:      \(.blobBytes)\nbytes requested: \(.bytesRequested)\nbytes received:  \(.bytesReceived)\nfiles reused:    \(.filesReused)\nchunks reused:   \(.chunksReused)\ntar-split:       \(if ([.layers[] | select(.tarSplitPredicted)] | length) > 0 then "predicted from v1, not fetched" else "fetched" end)\nskipped:         \(100 * (.blobBytes - .bytesRequested) / .blobBytes | floor)% of the blob"' "$work/pull-v2.json"

step "Store usage: ten versions would cost their unique bytes, not ten copies"
"$kura" --root "$work/node" images
"$kura" --root "$work/node" df -v
"$kura" --root "$work/node" fsck

if [ "$(id -u)" = 0 ] && "$kura" mount --help >/dev/null 2>&1; then
	step "Mounting version 2 with composefs (EROFS metadata + overlayfs data-only layer)"
	mkdir -p "$work/mnt"
	"$kura" --root "$work/node" mount "$reg/demo:v2" "$work/mnt" --verity off
	mounted="$work/mnt"
	findmnt "$work/mnt" || true
	ls "$work/mnt" | head
	cmp "$work/mnt/new-asset.bin" <(tar -xOf "$work/v2.tar" ./new-asset.bin) && echo "new-asset.bin reads back identical through the mount"
fi
if [ "$(id -u)" = 0 ] && command -v podman >/dev/null && command -v runc >/dev/null && "$kura" layer-store --help >/dev/null 2>&1; then
	bash scripts/demo-layerstore.sh "$kura" "$reg" "$work/registry.log" "$changed"
fi
step "Done"
