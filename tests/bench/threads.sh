#!/usr/bin/env bash
# Where the host's CPU time goes, per thread, while it runs a pipeline: the user + system time
# of each of its threads (by thread name, from /proc/PID/task/*/stat) over a run of COUNT
# messages sent by `host publish` as fast as the host takes them.
#
# Usage (the host must be built: cargo build --workspace --release):
#
#   bash tests/bench/threads.sh [PIPELINE] [COUNT]
#   # defaults: pipelines/rules-to-jsonl.yaml 1000000
#
# Threads are named by what they run: `stage-NAME` a worker (the stages sharing it, and the
# decoding of a source it is the one consumer of), `host-rt` the runtime's threads (the
# sources' connections, the admin API), `host` the main thread.

set -euo pipefail
export LC_ALL=C

PIPELINE=${1:-pipelines/rules-to-jsonl.yaml}
COUNT=${2:-1000000}
if ! [[ $COUNT =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [PIPELINE] [COUNT]" >&2
    exit 2
fi

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
cd "$ROOT"
HOST=target/release/host
for tool in curl python3; do
    command -v "$tool" >/dev/null || { echo "$0: needs $tool" >&2; exit 1; }
done
[[ -x $HOST ]] || { echo "$0: build first: cargo build --workspace --release" >&2; exit 1; }

WORK=$(mktemp -d)
HOST_PID=""
cleanup() {
    [[ -n $HOST_PID ]] && kill "$HOST_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

source "$HERE/host.sh"
INGEST="tcp://127.0.0.1:$(free_port)"
ADMIN="127.0.0.1:$(free_port)"
INGEST_ENDPOINT=$INGEST ADMIN_LISTEN=$ADMIN OUT_DIR=$WORK/out PLUGIN_DIR=target/release \
    RUST_LOG=warn "$HOST" --pipeline "$PIPELINE" 2>"$WORK/host.log" &
HOST_PID=$!
wait_for_host "$HOST_PID" "$WORK/host.log"

# Clock ticks per thread name, before and after.
ticks() {
    for t in /proc/"$HOST_PID"/task/*; do
        read -r -a f <"$t/stat"
        # The name is field 2, in parentheses, without spaces here; utime and stime 14, 15.
        echo "$(cat "$t/comm") $((f[13] + f[14]))"
    done | awk '{a[$1] += $2} END {for (k in a) print k, a[k]}'
}
ticks >"$WORK/before"
"$HOST" publish --to "$INGEST" --count "$COUNT" >"$WORK/publish.log" 2>&1
wait_settled "$COUNT" 0.2
ticks >"$WORK/after"

HZ=$(getconf CLK_TCK)
echo "CPU: $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo) ($(nproc) CPUs)"
echo "$COUNT messages, pipeline $PIPELINE; $(tail -n1 "$WORK/publish.log")"
awk -v hz="$HZ" -v n="$COUNT" '
    NR == FNR { before[$1] = $2; next }
    { ms = ($2 - before[$1]) * 1000 / hz; total += ms; if (ms > 0) row[$1] = ms }
    END {
        for (k in row) printf "%-24s %8.0f ms  %6.3f us/msg  %5.1f%%\n", k, row[k], row[k] * 1000 / n, 100 * row[k] / total
        printf "%-24s %8.0f ms  %6.3f us/msg\n", "all threads", total, total * 1000 / n
    }' "$WORK/before" "$WORK/after" | sort -k2 -n -r
