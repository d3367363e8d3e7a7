#!/usr/bin/env bash
# Rootless lazy pull (issue 17, tree mount): as uid 65534, time from the start of a pull of bench
# image c0 until apache2 -t ("Syntax OK": config read, every module loaded) and apache2 -v have run
# from the image, chrooted in a user and mount namespace (tmpfs on /run), for
#   lazy: kura pull --lazy --mount DIR   (first answer from the FUSE tree while the pull goes on)
#   full: kura pull, then kura checkout  (the rootless way without lazy pulls)
# alternating, each run with a new store, and the registry body bytes each fetched until then
# (docker-registry's access log). Run as root (setpriv, a registry) after bench/run.sh made the
# registry content: KURA_BENCH_WORK must hold registry-full (seed it: cp -al
# /var/tmp/kura-bench/registry-full "$KURA_BENCH_WORK"/). Needs fuse3 (fusermount3) and a /dev/fuse
# of mode 0666 (scripts/setup.sh). Prints one line per run, then the medians.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH
W=${KURA_BENCH_WORK:?set KURA_BENCH_WORK to a work dir holding registry-full}
RUNS=${RUNS:-5}
[ -d "$W/registry-full/data" ] || { echo "no $W/registry-full/data" >&2; exit 1; }
R=$W/rootless-lazy
rm -rf "$R" && mkdir -p "$R" && chmod 755 "$W" "$R"
go build -o "$R/kura" ./cmd/kura
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$R/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $W/registry-full/data
http:
  addr: 127.0.0.1:$PORT
EOF
docker-registry serve "$R/config.yml" > "$R/access.log" 2> "$R/registry.log" &
REGPID=$!
trap 'kill $REGPID' EXIT
until curl -sf "http://127.0.0.1:$PORT/v2/" > /dev/null; do sleep 0.1; done
REF=127.0.0.1:$PORT/bench/kura:c0
CMD='. /etc/apache2/envvars && /usr/sbin/apache2 -C "ServerName localhost" -t 2>&1 && /usr/sbin/apache2 -v | head -1'

# one TOOL N: one timed run; prints "TOOL N seconds bytes answer".
one() {
	local H=$R/h-$1-$2 t0 t1 L0 L1 ans pid
	rm -rf "$H" && mkdir -p "$H/mnt" "$H/run" && chown -R 65534:65534 "$H"
	local AS="setpriv --reuid=65534 --regid=65534 --clear-groups env -i HOME=$H XDG_RUNTIME_DIR=$H/run PATH=/usr/bin:/bin:/usr/sbin:/sbin"
	run_in() { $AS unshare -rm /bin/sh -c "mount -t tmpfs tmpfs $1/run && mkdir -p $1/run/apache2 $1/run/lock && chroot $1 /bin/sh -c '$CMD'" | tr '\n' ' '; }
	sync
	L0=$(wc -l < "$R/access.log")
	t0=$(date +%s.%N)
	if [ "$1" = lazy ]; then
		$AS "$R/kura" pull --lazy --mount "$H/mnt" --tls-verify=false "$REF" > "$H/pull.out" 2> "$H/pull.err" &
		pid=$!
		until grep -qs mounted "$H/pull.out"; do
			kill -0 $pid 2> /dev/null || { cat "$H/pull.err" >&2; exit 1; }
			sleep 0.01 # polling the tool under test
		done
		ans=$(run_in "$H/mnt")
		t1=$(date +%s.%N)
		L1=$(wc -l < "$R/access.log")
		until grep -q complete "$H/pull.out"; do sleep 0.2; done # untimed: the pull completes
		$AS fusermount3 -u "$H/mnt"
		wait $pid
	else
		$AS "$R/kura" pull -q --tls-verify=false "$REF" > "$H/pull.out" 2> "$H/pull.err"
		$AS "$R/kura" checkout "$REF" "$H/co" > /dev/null
		ans=$(run_in "$H/co")
		t1=$(date +%s.%N)
		L1=$(wc -l < "$R/access.log")
	fi
	case "$ans" in *"Syntax OK"*"Apache/"*) ;; *) echo "$1 run $2: apache2 said: $ans" >&2; exit 1 ;; esac
	echo "$1 $2 $(echo "$t1 - $t0" | bc) $(sed -n "$((L0 + 1)),${L1}p" "$R/access.log" | awk '$10 ~ /^[0-9]+$/ { s += $10 } END { print s + 0 }')"
	rm -rf "$H"
}

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for i in $(seq "$RUNS"); do
	one lazy "$i"
	one full "$i"
done | tee "$R/results.txt"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
for t in lazy full; do
	awk -v t=$t '$1 == t { print $3, $4 }' "$R/results.txt" | sort -n |
		awk -v t=$t '{ s[NR] = $1; b = $2 } END { printf "%s: median %.2f s (%.2f-%.2f), %.1f MB fetched\n", t, s[int((NR + 1) / 2)], s[1], s[NR], b / 1e6 }'
done
