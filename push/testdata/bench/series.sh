#!/bin/bash
# series.sh: alternating runs of bench.sh for both tools. Start it with setsid: it raises its own
# autogroup's weight (nice -15), so on a shared machine other sessions weigh less; both tools get
# the same treatment. Example:
#   python3 mklayout.py go.tar /var/tmp/gosrc && KURA=/tmp/kura SRC=/var/tmp/gosrc setsid ./series.sh
cd "$(dirname "$0")"
echo -15 > /proc/$$/autogroup
for r in 1 2 3; do ./bench.sh k$r zstd:chunked kura; ./bench.sh s$r zstd:chunked skopeo; done
for r in 1 2; do ./bench.sh kg$r gzip kura; ./bench.sh sg$r gzip skopeo; done
