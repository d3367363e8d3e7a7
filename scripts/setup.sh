#!/usr/bin/env bash
# Installs everything Kura's tests, demo and benchmarks need on a fresh Debian 12 machine (run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH
export DEBIAN_FRONTEND=noninteractive

# util-linux: setpriv (tests as an unprivileged user), mount; e2fsprogs: mkfs.ext4 (full-disk drill);
# time: GNU time measures peak RSS of the pull bombs (reliability).
# containerd: Debian's containerd 1.6 and ctr, for the snapshotter's interop tests.
pkgs=(zstd tar jq curl fsverity erofs-utils skopeo podman docker-registry xfsprogs e2fsprogs util-linux mount time runc containerd debootstrap)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

go mod download
if [ -f interop/go.mod ]; then (cd interop && go mod download); fi
if [ -f bench/go.mod ]; then (cd bench && go mod download); fi
