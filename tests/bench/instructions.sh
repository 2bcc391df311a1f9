#!/usr/bin/env bash
# Counts the instructions the host executes per message while it runs a pipeline, under
# valgrind's callgrind: a count that does not depend on what else the machine is doing (a
# shared machine's CPU time moves by tens of percent between runs), so two builds can be
# compared on any machine, one after the other.
#
# Usage (from anywhere; apt-get install -y valgrind curl; the host must be built:
# cargo build --workspace --release):
#
#   bash tests/bench/instructions.sh [PIPELINE] [COUNT] [RATE] [BUILD_DIR]
#   # defaults: pipelines/rules-to-jsonl.yaml 100000 20000 target/release
#
# How: the host (BUILD_DIR/host, with its plugin libraries from BUILD_DIR) runs PIPELINE
# under callgrind, its source bound to a free port and its files in a temporary directory;
# once it is up, the counters are zeroed (start-up and the libraries' load checks are not
# counted); `host publish` sends COUNT messages at RATE per second (the host runs about 50
# times slower under callgrind: keep RATE low enough for it to keep up); once the host's
# /metrics say every message is settled, the counters are dumped. Batches are as large as
# RATE makes them, so compare counts taken at the same RATE. The profile is kept
# (callgrind.out in the directory printed) for callgrind_annotate.

set -euo pipefail
export LC_ALL=C

PIPELINE=${1:-pipelines/rules-to-jsonl.yaml}
COUNT=${2:-100000}
RATE=${3:-20000}
BUILD=${4:-target/release}
if ! [[ $COUNT =~ ^[1-9][0-9]*$ && $RATE =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [PIPELINE] [COUNT] [RATE] [BUILD_DIR]" >&2
    exit 2
fi

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
cd "$ROOT"
HOST=$BUILD/host
for tool in valgrind callgrind_control curl python3; do
    command -v "$tool" >/dev/null || { echo "$0: needs $tool" >&2; exit 1; }
done
[[ -x $HOST ]] || { echo "$0: build first: cargo build --workspace --release" >&2; exit 1; }

WORK=$(mktemp -d)
HOST_PID=""
cleanup() { [[ -n $HOST_PID ]] && kill "$HOST_PID" 2>/dev/null || true; }
trap cleanup EXIT

source "$HERE/host.sh"
INGEST="tcp://127.0.0.1:$(free_port)"
ADMIN="127.0.0.1:$(free_port)"

INGEST_ENDPOINT=$INGEST ADMIN_LISTEN=$ADMIN OUT_DIR=$WORK/out PLUGIN_DIR=$BUILD RUST_LOG=warn \
    valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out" \
    "$HOST" --pipeline "$PIPELINE" 2>"$WORK/host.log" &
HOST_PID=$!
wait_for_host "$HOST_PID" "$WORK/host.log"
callgrind_control -z "$HOST_PID" >/dev/null 2>&1

"$HOST" publish --to "$INGEST" --count "$COUNT" --rate "$RATE" >/dev/null 2>&1
# Every message settled, looked at every 2 s: each look at /metrics is counted too (a few
# million instructions).
sleep 2
wait_settled "$COUNT" 2
callgrind_control -d "$HOST_PID" >/dev/null 2>&1
kill -TERM "$HOST_PID"
wait "$HOST_PID" || true
HOST_PID=""

# The dump taken above is the file with the counts since they were zeroed.
DUMP=$(ls "$WORK"/callgrind.out.* 2>/dev/null | head -1)
[[ -n $DUMP ]] || { echo "$0: callgrind wrote no dump" >&2; exit 1; }
echo "$COUNT messages at $RATE msg/s, pipeline $PIPELINE, build $BUILD (profile: $DUMP)"
awk -v n="$COUNT" '/^(summary|totals):/ {printf "%.0f instructions per message\n", $2 / n; exit}' "$DUMP"
