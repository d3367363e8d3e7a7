#!/usr/bin/env bash
# The layer-store part of `make demo`: podman (Debian's 4.3.1) pulls the demo's two image versions
# through `kura layer-store serve` (Kura as containers/storage's additional layer store), runs a
# container from each, then pulls the same two with plain podman (partial pulls on) into another
# storage, and prints bytes per pull and disk side by side.
# Usage: scripts/demo-layerstore.sh KURA REGISTRY REGISTRY_LOG FILE
#   REGISTRY (host:port, plain HTTP) holds demo:v1 and demo:v2; REGISTRY_LOG is its access log
#   (Combined Log Format, the byte counts come from it); FILE is a path in the images that
#   version 2 changed, which the containers print the end of.
set -euo pipefail
kura=$1 reg=$2 reglog=$3 file=$4
# overlay needs a file system that is not itself overlay or tmpfs: /var/tmp, not /tmp.
base=$(mktemp -d /var/tmp/kura-demo-als.XXXXXX)
als=$base/als server_pid=""

cleanup() {
	set +e # every step runs, whatever failed before
	for p in kura plain; do
		[ -f "$base/$p/env" ] || continue
		(. "$base/$p/env"; podman rmi --all --force; podman image unmount --all --force) >/dev/null 2>&1
		umount -R "$base/$p/root/overlay" 2>/dev/null
	done
	if [ -n "$server_pid" ]; then kill -TERM "$server_pid"; wait "$server_pid"; fi
	# The per-layer composefs mounts outlive the server (podman's images used them).
	findmnt -rn -o TARGET | grep "^$base/" | sort -r | while read -r m; do umount -l "$m"; done
	rm -rf "$base"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# podmanenv NAME [EXTRA storage.options LINE]: a private podman configuration in $base/NAME/env.
# Graph root and run root are in storage.conf, not on the command line: podman 4.3.1 drops
# additionallayerstores when --root, --runroot or --storage-driver is given.
podmanenv() {
	local d=$base/$1
	mkdir -p "$d/tmp"
	cat >"$d/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$d/root"
runroot = "$d/runroot"

[storage.options]
pull_options = {enable_partial_images = "true", use_hard_links = "false"}
${2:-}
EOF
	printf 'unqualified-search-registries = []\n\n[[registry]]\nlocation = "%s"\ninsecure = true\n' "$reg" >"$d/registries.conf"
	printf '[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\ntmp_dir = "%s"\n' "$d/tmp" >"$d/containers.conf"
	printf 'export CONTAINERS_STORAGE_CONF=%s CONTAINERS_REGISTRIES_CONF=%s CONTAINERS_CONF=%s\n' \
		"$d/storage.conf" "$d/registries.conf" "$d/containers.conf" >"$d/env"
}

# served BEFORE: bytes the registry sent since its access log had BEFORE lines, as "ALL PODMAN":
# all requests, and those not made by Kura (whose User-Agent starts with "kura").
served() {
	tail -n +"$(($1 + 1))" "$reglog" | awk '$6 ~ /^"(GET|HEAD)$/ && $10 ~ /^[0-9]+$/ {
		n += $10; if ($0 !~ /"kura[^"]*"$/) p += $10 } END { print n + 0, p + 0 }'
}
loglines() { wc -l <"$reglog"; }

# pullrun NAME TAG: pull REG/demo:TAG with podman NAME, print the end of FILE from a container,
# and record the bytes the registry sent for the pull in $base/NAME/bytes-TAG.
pullrun() {
	local before all pod
	before=$(loglines)
	(. "$base/$1/env" && podman pull -q --tls-verify=false "$reg/demo:$2" >/dev/null)
	served "$before" >"$base/$1/bytes-$2"
	read -r all pod <"$base/$1/bytes-$2"
	echo "podman pull $reg/demo:$2 ($1): the registry sent $all bytes, $pod of them to podman itself"
	# The image is a source tree with no programs: the container runs a static cat bound in.
	# --ulimit: without CAP_SYS_RESOURCE podman's default limits fail with EPERM on this VM.
	(. "$base/$1/env" && podman run --rm --network none --ulimit nofile=1024:1024 --ulimit nproc=4096:4096 \
		-v "$base/cat:/kura-cat:ro" "$reg/demo:$2" /kura-cat "/$file") | tail -n 2 | sed "s|^|  demo:$2 /$file: |"
}

step "podman with Kura as its additional layer store (kura layer-store serve)"
mkdir -p "$base/catsrc" "$als"
printf 'module cat\n\ngo 1.22\n' >"$base/catsrc/go.mod"
printf 'package main\n\nimport (\n\t"io"\n\t"os"\n)\n\nfunc main() {\n\tfor _, a := range os.Args[1:] {\n\t\tf, err := os.Open(a)\n\t\tif err != nil {\n\t\t\tos.Stderr.WriteString(err.Error() + "\\n")\n\t\t\tos.Exit(1)\n\t\t}\n\t\tio.Copy(os.Stdout, f)\n\t\tf.Close()\n\t}\n}\n' >"$base/catsrc/main.go"
(cd "$base/catsrc" && CGO_ENABLED=0 GOFLAGS= GOWORK=off go build -trimpath -o "$base/cat" .)
printf '[[registry]]\nlocation = "%s"\ninsecure = true\n' "$reg" >"$base/kura-registries.conf"
"$kura" --root "$base/store" --log-level info layer-store serve "$als" --state "$base/state" \
	--registries-conf "$base/kura-registries.conf" 2>"$base/server.log" &
server_pid=$!
for _ in $(seq 1 200); do
	if grep -q 'layer store serving' "$base/server.log"; then break; fi
	if ! kill -0 "$server_pid" 2>/dev/null; then cat "$base/server.log"; exit 1; fi
	sleep 0.1
done
grep -q 'layer store serving' "$base/server.log" || { cat "$base/server.log"; exit 1; }
findmnt -n "$als"
podmanenv kura "additionallayerstores = [\"$als:ref\"]"
pullrun kura v1
pullrun kura v2
grep 'pulled for the layer store' "$base/server.log" | sed -n 's/.*ref=\([^ ]*\) .*bytesReceived=\([0-9]*\).*/  Kura pulled \1: received \2 bytes/p'

step "The same with plain podman (zstd:chunked partial pulls on)"
podmanenv plain
pullrun plain v1
pullrun plain v2

step "Side by side"
disk() { du -scx --block-size=1 "$@" 2>/dev/null | tail -n 1 | cut -f1; }
kdisk=$(disk "$base/kura/root" "$base/store" "$base/state")
pdisk=$(disk "$base/plain/root")
printf '%-34s %16s %16s\n' "" "podman + Kura" "plain podman"
for t in v1 v2; do
	read -r kall kpod <"$base/kura/bytes-$t"
	read -r pall _ <"$base/plain/bytes-$t"
	printf '%-34s %16s %16s\n' "registry bytes, pull of demo:$t" "$kall" "$pall" "  of which to podman itself" "$kpod" "$pall"
done
printf '%-34s %16s %16s\n' "disk after both (bytes)" "$kdisk" "$pdisk"
echo "(podman + Kura's disk: podman's storage, Kura's store and the layer store's state together)"
