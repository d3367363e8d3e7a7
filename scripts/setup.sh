#!/usr/bin/env bash
# Installs everything Kura's tests, demo and benchmarks need on a fresh Debian 12 machine (run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH
export DEBIAN_FRONTEND=noninteractive

# util-linux: setpriv (tests as an unprivileged user), mount; e2fsprogs: mkfs.ext4 (full-disk drill);
# time: GNU time measures peak RSS of the pull bombs (reliability).
# containerd: Debian's containerd 1.6 and ctr, for the snapshotter's interop tests.
# fuse3: fusermount3, which mounts an unprivileged user's FUSE file system (rootless lazy pulls).
pkgs=(zstd tar jq curl fsverity erofs-utils skopeo podman docker-registry xfsprogs e2fsprogs util-linux mount time runc containerd debootstrap fuse3)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# fusermount3 opens /dev/fuse as the calling user. Debian's udev makes it 0666; without udev (these
# VMs, containers) devtmpfs leaves it 0600 and no user can mount FUSE. Do what udev would.
if [ -c /dev/fuse ] && [ "$(stat -c %a /dev/fuse)" != 666 ]; then
	chmod 0666 /dev/fuse
fi

go mod download
if [ -f interop/go.mod ]; then (cd interop && go mod download); fi
if [ -f bench/go.mod ]; then (cd bench && go mod download); fi
