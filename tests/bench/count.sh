#!/usr/bin/env bash
# Counts the host's per-message work while it runs a pipeline: CPU time, system calls,
# thread wake-ups (futex) and context switches, clock reads, and the plugin libraries'
# allocations. Everything is divided by the number of messages sent.
#
# Usage (from anywhere; root, with perf: apt-get install -y linux-perf; the host must be
# built: cargo build --workspace --release):
#
#   bash tests/bench/count.sh [PIPELINE] [COUNT] [RATE]
#   # defaults: pipelines/rules-to-jsonl.yaml 1000000, as fast as the host takes them
#
# How: the host runs PIPELINE (its source bound to a free port, its files in a temporary
# directory); `perf stat -p` attaches to it; `host publish` sends COUNT messages (at RATE
# per second if given); once the host's /metrics say every message is settled, perf stops.
#
#   - system calls, futex calls, context switches: the kernel's software events and
#     tracepoints (raw_syscalls:sys_enter, syscalls:sys_enter_*), which need no hardware
#     counters (virtual machines often have none);
#   - clock reads: an uprobe on libc's clock_gettime (Rust's Instant and SystemTime call it;
#     it then reads the vDSO, so no system call is counted for it);
#   - plugin allocations: an uprobe on libc's malloc and realloc. The host allocates through
#     its own mimalloc (`host bench` counts those: allocs/msg); plugin libraries built with
#     the default allocator go through libc's.
#
# Uprobes slow each probed call down (a trap per call), so the CPU time here is higher than
# `host bench`'s (a host slowed down this much may also fall behind a RATE it would keep up
# with, and then read larger batches); use `host bench` for time and this script for
# counts. The probes this script adds are removed when it ends.

set -euo pipefail
export LC_ALL=C

PIPELINE=${1:-pipelines/rules-to-jsonl.yaml}
COUNT=${2:-1000000}
RATE=${3:-}
if ! [[ $COUNT =~ ^[1-9][0-9]*$ && ($RATE == "" || $RATE =~ ^[1-9][0-9]*$) ]]; then
    echo "usage: $0 [PIPELINE] [COUNT] [RATE]" >&2
    exit 2
fi

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
cd "$ROOT"
HOST=target/release/host
for tool in perf curl python3; do
    command -v "$tool" >/dev/null || { echo "$0: needs $tool" >&2; exit 1; }
done
[[ -x $HOST ]] || { echo "$0: build first: cargo build --workspace --release" >&2; exit 1; }

LIBC=$(ldd "$HOST" | awk '/libc\.so/ {print $3}')
WORK=$(mktemp -d)
ADDED_PROBES=()
HOST_PID=""
cleanup() {
    [[ -n $HOST_PID ]] && kill "$HOST_PID" 2>/dev/null || true
    for p in "${ADDED_PROBES[@]}"; do perf probe -q -d "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

for fn in clock_gettime malloc realloc; do
    if ! perf probe -l 2>/dev/null | grep -q "probe_libc:$fn "; then
        perf probe -q -x "$LIBC" -a "$fn" >/dev/null 2>&1 ||
            { echo "$0: cannot add an uprobe on $fn in $LIBC (root?)" >&2; exit 1; }
        ADDED_PROBES+=("probe_libc:$fn")
    fi
done

source "$HERE/host.sh"
INGEST="tcp://127.0.0.1:$(free_port)"
ADMIN="127.0.0.1:$(free_port)"

INGEST_ENDPOINT=$INGEST ADMIN_LISTEN=$ADMIN OUT_DIR=$WORK/out PLUGIN_DIR=target/release \
    RUST_LOG=warn "$HOST" --pipeline "$PIPELINE" 2>"$WORK/host.log" &
HOST_PID=$!
wait_for_host "$HOST_PID" "$WORK/host.log"

EVENTS=task-clock,context-switches,cpu-migrations,raw_syscalls:sys_enter
for s in recvfrom write futex epoll_wait; do EVENTS+=",syscalls:sys_enter_$s"; done
EVENTS+=",probe_libc:clock_gettime,probe_libc:malloc,probe_libc:realloc"
perf stat -e "$EVENTS" -x, -o "$WORK/stat.csv" -p "$HOST_PID" &
PERF_PID=$!
sleep 0.3

"$HOST" publish --to "$INGEST" --count "$COUNT" ${RATE:+--rate "$RATE"} >/dev/null 2>&1
# Every message settled (looked at every 0.2 s, so that the looking adds little to the counts).
settled=yes
wait_settled "$COUNT" 0.2 || settled=no
kill -INT "$PERF_PID"
wait "$PERF_PID" || true
[[ $settled == yes ]] || exit 1

echo "CPU: $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo) ($(nproc) CPUs)"
echo "$COUNT messages, pipeline $PIPELINE, ${RATE:-as many} msg/s offered"
awk -F, -v n="$COUNT" '
    /^[0-9.]+,/ {
        name = $3
        sub(/^(syscalls:sys_enter_|raw_syscalls:|probe_libc:)/, "", name)
        if ($3 == "task-clock") printf "%-22s %10.3f us per message\n", "cpu time", $1 * 1000 / n
        else printf "%-22s %10.4f per message\n", name, $1 / n
    }' "$WORK/stat.csv"
