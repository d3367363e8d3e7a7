#!/bin/bash
# Env: KURA (kura binary), SRC (OCI layout from mklayout.py). Needs docker-registry, skopeo, curl, GNU time.
# One measurement: start a fresh Debian docker-registry, run the given command with /usr/bin/time, print wall/user/sys and the pushed layer size.
# usage: bench.sh NAME FORMAT TOOL   (TOOL = kura|skopeo)
set -e
name=$1; fmt=$2; tool=$3
root=$(mktemp -d /var/tmp/pushbench-reg-XXXX)
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
cat > $root/config.yml <<EOC
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $root/data
http:
  addr: 127.0.0.1:$port
EOC
nice -n -15 docker-registry serve $root/config.yml >$root/log 2>&1 &
rpid=$!
for i in $(seq 200); do curl -sf http://127.0.0.1:$port/v2/ >/dev/null && break; sleep 0.05; done
dest=docker://127.0.0.1:$port/bench/$name:latest
if [ $tool = kura ]; then
  cmd=(${KURA:-kura} copy --tls-verify=false --format $fmt oci:${SRC:?set SRC to the layout made by mklayout.py}:go $dest)
else
  cmd=(skopeo copy -q --dest-tls-verify=false --dest-compress-format $fmt oci:${SRC:?set SRC to the layout made by mklayout.py}:go $dest)
fi
nice -n -15 /usr/bin/time -f "%e %U %S" -o $root/time "${cmd[@]}" >/dev/null 2>$root/err || { cat $root/err; kill $rpid; exit 1; }
size=$(find $root/data -path '*blobs/sha256*' -name data -size +1M -printf '%s\n' | sort -n | tail -1)
echo "$name $tool $fmt wall/user/sys $(cat $root/time) layer $size"
kill $rpid; wait $rpid 2>/dev/null || true
rm -rf $root
