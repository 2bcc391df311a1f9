#!/usr/bin/env bash
# Compares, on this machine and in one run, three receivers of the same ZeroMQ stream:
#
#   1. bare libzmq PULL   pull.c: binds a PULL socket, receives COUNT messages, counts them.
#   2. host               target/release/host --pipeline pipelines/rules-to-jsonl.yaml:
#                         drop level==debug, rename msg->message, set pipeline, JSON lines.
#   3. rsyslog            rsyslogd 8.2302 with imczmq + mmjsonparse doing the same work
#                         (rsyslog.conf, a template this script fills in).
#
# Usage (from anywhere; the host must be built: cargo build --workspace --release):
#
#   bash tests/bench/compare.sh [COUNT] [ROUNDS]     # defaults: 1000000 3
#   bash tests/bench/compare.sh --check              # only the correctness check
#
# The sender is always push.c (libzmq PUSH, connects, sends COUNT messages as fast as the
# receiver takes them, the messages of the host's own generator; 1 in 4 has level "debug").
# Every round runs the three variants back to back, each receiver started fresh on a fresh
# port and stopped after. Per variant and round:
#
#   rate  COUNT / (sender start -> receiver has everything). "Everything" is COUNT messages
#         received for the bare PULL (it reports the time itself), and exactly the expected
#         number of kept lines in the output file for host and rsyslog (its line count is
#         polled every ~10 ms once the sender has exited, as it cannot be complete before).
#   CPU   user + system time of the receiver process (all its threads) over the same span,
#         per message sent: /proc/PID/stat fields 14 and 15 for host and rsyslog, the
#         program's own getrusage for the bare PULL.
#
# Before measuring, host and rsyslog each process CHECK_COUNT messages with a fixed sent_at;
# their outputs must hold the same records (same keys and values, key order aside), and
# those must be the expected ones (computed from the message format), or the script fails.
#
# Progress goes to stderr; the result table (CPU model on its first line) to stdout.

set -euo pipefail
export LC_ALL=C # decimal points in awk and `read -t`, byte-wise sort

# ---------------------------------------------------------------------------------------
# Arguments and settings

CHECK_ONLY=0
if [[ ${1:-} == --check ]]; then
    CHECK_ONLY=1
    shift
fi
COUNT=${1:-1000000}
ROUNDS=${2:-3}
if ! [[ $COUNT =~ ^[1-9][0-9]*$ && $ROUNDS =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [COUNT] [ROUNDS]   or   $0 --check" >&2
    exit 2
fi

CHECK_COUNT=1000                 # messages in the correctness check
CHECK_SENT_AT=1700000000.123456  # sent_at of every check message (outputs must be equal)
TIMEOUT_S=120                    # longest wait for a receiver to have everything
START_TIMEOUT_S=30               # longest wait for a receiver to listen / to stop
POLL_S=0.01                      # line-count poll interval

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
cd "$ROOT" # the host runs from the repository root, as documented

HOST_BIN=target/release/host
PLUGIN_DIR=target/release
PIPELINE=pipelines/rules-to-jsonl.yaml
CONF_TEMPLATE=$HERE/rsyslog.conf

log() { echo "$*" >&2; }

# ---------------------------------------------------------------------------------------
# Prerequisites: report what is missing with the command that installs it; install nothing.

missing=()
if ! command -v cc >/dev/null; then
    missing+=(gcc)
    [[ -f /usr/include/zmq.h ]] || missing+=(libzmq3-dev)
elif ! echo '#include <zmq.h>' | cc -E -x c - >/dev/null 2>&1; then
    missing+=(libzmq3-dev)
fi
RSYSLOGD=$(command -v rsyslogd || echo /usr/sbin/rsyslogd)
[[ -x $RSYSLOGD ]] || missing+=(rsyslog)
IMCZMQ=
for f in /usr/lib/*/rsyslog/imczmq.so /usr/lib/rsyslog/imczmq.so /usr/lib64/rsyslog/imczmq.so; do
    if [[ -f $f ]]; then IMCZMQ=$f; break; fi
done
[[ -n $IMCZMQ ]] || missing+=(rsyslog-czmq)
command -v jq >/dev/null || missing+=(jq) # compares the records in the check
if ((${#missing[@]})); then
    log "missing: ${missing[*]}; install with:"
    log ""
    log "  apt-get install -y ${missing[*]}"
    log ""
    log "(installing rsyslog may start a system rsyslogd; it is not needed here)"
    exit 1
fi
for f in "$HOST_BIN" "$PLUGIN_DIR/libplugin_rules.so" "$PLUGIN_DIR/libplugin_jsonl.so"; do
    if [[ ! -e $f ]]; then
        log "$ROOT/$f is missing; build first: cargo build --workspace --release"
        exit 1
    fi
done

CLK_TCK=$(getconf CLK_TCK)
# The goal names rsyslog 8.2302 (Debian 12's): say which one ran.
RSYSLOG_VERSION=$("$RSYSLOGD" -v 2>/dev/null | head -n1 || true)
CPU_MODEL=$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -n1)
[[ -n $CPU_MODEL ]] || CPU_MODEL=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo | head -n1)

# ---------------------------------------------------------------------------------------
# Temp dir, child processes, cleanup

WORK=$(mktemp -d "${TMPDIR:-/tmp}/bench-compare.XXXXXX")
CHILDREN=() # pids of running receivers and senders

track() { CHILDREN+=("$1"); }
untrack() {
    local p keep=()
    for p in "${CHILDREN[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    CHILDREN=("${keep[@]}")
}

cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    for p in "${CHILDREN[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${CHILDREN[@]}"; do
        for _ in {1..50}; do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

fail() { # MESSAGE [LOGFILE]: print, show the end of the log, exit 1 (cleanup runs)
    log ""
    log "FAILED: $1"
    if [[ -n ${2:-} && -s $2 ]]; then
        log "--- last lines of $2:"
        tail -n 20 "$2" >&2
    fi
    exit 1
}

# Sleeping and reading the clock without forking a process, so that polling every 10 ms
# takes next to no CPU from the processes being measured: `read -t` on a FIFO nobody
# writes to, and $EPOCHREALTIME (bash 5).
mkfifo "$WORK/nap.fifo"
exec {NAP_FD}<>"$WORK/nap.fifo"
nap() { read -r -t "$1" -u "$NAP_FD" _ || true; }
now_us() { NOW=${EPOCHREALTIME//[.,]/}; } # sets NOW: microseconds since the epoch

alive() { # PID: running (not exited; bash reaps its children as they exit)
    kill -0 "$1" 2>/dev/null
}

cpu_ticks() { # PID: sets TICKS to user + system clock ticks (/proc/PID/stat 14 and 15)
    local stat
    local -a f
    read -r stat <"/proc/$1/stat"
    read -r -a f <<<"${stat##*) }" # fields from 3 on (the name in parentheses may hold spaces)
    TICKS=$((f[11] + f[12]))
}

USED_PORTS=" "
pick_port() { # sets PORT: a port nobody listens on, not used before in this run
    local p
    for _ in {1..200}; do
        p=$((20000 + RANDOM % 12000)) # below Linux's ephemeral range (32768-60999)
        [[ $USED_PORTS == *" $p "* ]] && continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            USED_PORTS+="$p "
            PORT=$p
            return 0
        fi
    done
    fail "no free TCP port found"
}

wait_listening() { # PID PORT NAME LOG: until PORT accepts TCP connections
    local pid=$1 port=$2 name=$3 logf=$4 deadline
    now_us
    deadline=$((NOW + START_TIMEOUT_S * 1000000))
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        alive "$pid" || fail "$name exited before listening on port $port" "$logf"
        now_us
        ((NOW < deadline)) || fail "$name not listening on port $port after ${START_TIMEOUT_S}s" "$logf"
        nap 0.01
    done
}

wait_exit() { # PID NAME SECONDS [LOG]: wait for PID to exit by itself; sets EXIT_CODE
    local pid=$1 name=$2 deadline
    now_us
    deadline=$((NOW + $3 * 1000000))
    while alive "$pid"; do
        now_us
        ((NOW < deadline)) || fail "$name still running after ${3}s" "${4:-}"
        nap 0.01
    done
    EXIT_CODE=0
    wait "$pid" || EXIT_CODE=$?
    untrack "$pid"
}

stop() { # PID NAME LOG: SIGTERM, wait (SIGKILL after START_TIMEOUT_S), report a bad exit
    local pid=$1 name=$2 logf=$3 deadline
    kill -TERM "$pid" 2>/dev/null || true
    now_us
    deadline=$((NOW + START_TIMEOUT_S * 1000000))
    while alive "$pid"; do
        now_us
        if ((NOW >= deadline)); then
            log "warning: $name did not stop ${START_TIMEOUT_S}s after SIGTERM; killing it"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        nap 0.01
    done
    local rc=0
    wait "$pid" || rc=$?
    untrack "$pid"
    if ((rc != 0)); then
        log "warning: $name exited with status $rc after SIGTERM (log: below)"
        tail -n 5 "$logf" >&2 || true
    fi
}

wait_lines() { # FILE EXPECTED PID NAME LOG: until the sender ($SENDER) has exited and FILE
    # holds EXPECTED lines; sets DONE (us)
    local file=$1 expected=$2 pid=$3 name=$4 logf=$5 deadline fd n lines=0
    now_us
    deadline=$((NOW + TIMEOUT_S * 1000000))
    # While the sender runs, the receiver cannot have everything yet: the sender exits only
    # once its last message is on the wire. Until then, wait without starting any process
    # (counting lines costs one process per poll, CPU taken from the ones measured).
    while alive "$SENDER"; do
        alive "$pid" || fail "$name exited while the sender was sending" "$logf"
        now_us
        ((NOW < deadline)) || fail "the sender has not finished in ${TIMEOUT_S}s" "$logf"
        nap "$POLL_S"
    done
    sender_done
    until [[ -e $file ]]; do
        alive "$pid" || fail "$name exited before writing $file" "$logf"
        now_us
        ((NOW < deadline)) || fail "$name wrote no $file in ${TIMEOUT_S}s" "$logf"
        nap "$POLL_S"
    done
    # The line count is kept up to date incrementally: `wc -l` reads from a descriptor this
    # shell holds open on the file, so each poll reads only what was appended since the
    # last one (the offset is shared) and costs one short-lived process.
    exec {fd}<"$file"
    while :; do
        n=$(wc -l <&"$fd")
        lines=$((lines + n))
        ((lines < expected)) || break
        alive "$pid" || fail "$name exited with $lines of $expected lines written" "$logf"
        now_us
        ((NOW < deadline)) ||
            fail "$name wrote $lines of $expected lines in ${TIMEOUT_S}s (messages lost?)" "$logf"
        nap "$POLL_S"
    done
    now_us
    DONE=$NOW
    exec {fd}<&-
    ((lines == expected)) || fail "$name wrote $lines lines, expected $expected" "$logf"
}

kept() { # COUNT: messages that survive the drop (i % 4 != 1 for i in 0..COUNT)
    echo $(($1 - ($1 + 2) / 4))
}

# ---------------------------------------------------------------------------------------
# Receivers: start one, fresh, on a fresh port; each sets PID, PORT, LOG and OUT.

start_pull() { # DIR COUNT
    pick_port
    LOG=$1/pull.log
    OUT=$1/pull.out
    "$WORK/pull" "tcp://127.0.0.1:$PORT" "$2" >"$OUT" 2>"$LOG" &
    PID=$!
    track "$PID"
    wait_listening "$PID" "$PORT" "bare PULL" "$LOG"
}

start_host() { # DIR
    pick_port
    LOG=$1/host.log
    OUT=$1/out/events.jsonl
    INGEST_ENDPOINT=tcp://127.0.0.1:$PORT ADMIN_LISTEN=127.0.0.1:0 PLUGIN_DIR=$PLUGIN_DIR \
        OUT_DIR=$1/out RUST_LOG=warn "$HOST_BIN" --pipeline "$PIPELINE" >"$LOG" 2>&1 &
    PID=$!
    track "$PID"
    wait_listening "$PID" "$PORT" "host" "$LOG"
}

rsyslog_conf() { # DIR PORT: writes DIR/rsyslog.conf from the template
    mkdir -p "$1/work"
    sed -e "s|@WORKDIR@|$1/work|g" \
        -e "s|@ENDPOINT@|tcp://127.0.0.1:$2|g" \
        -e "s|@OUTFILE@|$1/out/events.jsonl|g" \
        "$CONF_TEMPLATE" >"$1/rsyslog.conf"
}

start_rsyslog() { # DIR
    pick_port
    LOG=$1/rsyslogd.log
    OUT=$1/out/events.jsonl
    rsyslog_conf "$1" "$PORT"
    # -n: foreground; -f: only this config; -i: its own pid file (not /run/rsyslogd.pid)
    "$RSYSLOGD" -n -f "$1/rsyslog.conf" -i "$1/rsyslogd.pid" >"$LOG" 2>&1 &
    PID=$!
    track "$PID"
    wait_listening "$PID" "$PORT" "rsyslogd" "$LOG"
}

send() { # PORT COUNT [SENT_AT]: start the sender in the background; sets SENDER
    "$WORK/push" "tcp://127.0.0.1:$1" "${@:2}" 2>>"$WORK/push.log" &
    SENDER=$!
    track "$SENDER"
}

sender_done() { # wait for the sender to exit (it has handed everything over by then)
    wait_exit "$SENDER" "sender" "$START_TIMEOUT_S" "$WORK/push.log"
    ((EXIT_CODE == 0)) || fail "sender exited with status $EXIT_CODE" "$WORK/push.log"
    # push.log ends with "push: sent N messages to ...: queued in X s, flushed in Y s"
    local last
    last=$(tail -n 1 "$WORK/push.log")
    SENDER_S=${last##*flushed in }
    SENDER_S=${SENDER_S% s}
}

# ---------------------------------------------------------------------------------------
# One measured run of each variant; each appends "VARIANT RATE CPU_US_PER_MSG" to RESULTS.

RESULTS=$WORK/results

record() { # VARIANT ROUND START_US DONE_US CPU_US
    local rate cpu
    rate=$(awk -v n="$COUNT" -v t="$(($4 - $3))" 'BEGIN { printf "%.0f", n * 1e6 / t }')
    cpu=$(awk -v n="$COUNT" -v c="$5" 'BEGIN { printf "%.3f", c / n }')
    echo "$1 $rate $cpu" >>"$RESULTS"
    log "$(printf '  round %d/%d  %-8s %10s msg/s  %7s us CPU/msg  (%.3f s; the sender took %s s)' \
        "$2" "$ROUNDS" "$1" "$rate" "$cpu" "$(awk -v t="$(($4 - $3))" 'BEGIN { print t / 1e6 }')" \
        "$SENDER_S")"
}

measure_pull() { # ROUND
    local dir=$WORK/pull.$1 received cpu_us done_us t0 kv
    mkdir -p "$dir"
    start_pull "$dir" "$COUNT"
    now_us
    t0=$NOW
    send "$PORT" "$COUNT"
    wait_exit "$PID" "bare PULL" "$TIMEOUT_S" "$LOG"
    ((EXIT_CODE == 0)) || fail "bare PULL exited with status $EXIT_CODE" "$LOG"
    sender_done
    # pull.out: received=N bytes=B cpu_us=C done_us=T
    for kv in $(<"$OUT"); do
        case $kv in
            received=*) received=${kv#*=} ;;
            cpu_us=*) cpu_us=${kv#*=} ;;
            done_us=*) done_us=${kv#*=} ;;
        esac
    done
    [[ ${received:-} == "$COUNT" ]] || fail "bare PULL received ${received:-?} of $COUNT" "$LOG"
    record pull "$1" "$t0" "$done_us" "$cpu_us"
    rm -rf "$dir"
}

measure_file_receiver() { # VARIANT ROUND START_FN NAME: host or rsyslog
    local variant=$1 round=$2 name=$4 dir=$WORK/$1.$2 expected t0 c0 c1 lines
    expected=$(kept "$COUNT")
    mkdir -p "$dir"
    "$3" "$dir"
    cpu_ticks "$PID"
    c0=$TICKS
    now_us
    t0=$NOW
    send "$PORT" "$COUNT"
    wait_lines "$OUT" "$expected" "$PID" "$name" "$LOG" # waits for the sender too
    cpu_ticks "$PID"
    c1=$TICKS
    stop "$PID" "$name" "$LOG"
    # Nothing more may have come after the expected count (nothing extra, nothing twice).
    lines=$(wc -l <"$OUT")
    ((lines == expected)) || fail "$name wrote $lines lines in the end, expected $expected" "$LOG"
    record "$variant" "$round" "$t0" "$DONE" "$(((c1 - c0) * 1000000 / CLK_TCK))"
    rm -rf "$dir"
}

# ---------------------------------------------------------------------------------------
# Build the sender and the bare receiver.

log "compiling push.c and pull.c"
cc -O2 -Wall -o "$WORK/push" "$HERE/push.c" -lzmq
cc -O2 -Wall -o "$WORK/pull" "$HERE/pull.c" -lzmq

# ---------------------------------------------------------------------------------------
# Correctness check: host and rsyslog turn CHECK_COUNT identical messages into the same
# records, and those are the expected ones (computed here from the message format).

normalize() { # FILE: one record per line, keys sorted, lines sorted
    jq -cS . "$1" | sort
}

check_variant() { # VARIANT START_FN NAME: run CHECK_COUNT messages; leaves DIR/norm.jsonl
    local dir=$WORK/check.$1
    mkdir -p "$dir"
    "$2" "$dir"
    send "$PORT" "$CHECK_COUNT" "$CHECK_SENT_AT"
    wait_lines "$OUT" "$(kept "$CHECK_COUNT")" "$PID" "$3" "$LOG"
    stop "$PID" "$3" "$LOG"
    normalize "$OUT" >"$dir/norm.jsonl" || fail "$3 wrote lines that are not JSON: $OUT"
}

check_same() { # NAME_A FILE_A NAME_B FILE_B
    if ! cmp -s "$2" "$4"; then
        log "records differ (< $1, > $3; keys sorted, lines sorted):"
        diff "$2" "$4" | head -n 20 >&2 || true
        fail "$1 and $3 do not produce the same records"
    fi
}

log "check: rsyslog config"
mkdir -p "$WORK/conf-check"
rsyslog_conf "$WORK/conf-check" 1
"$RSYSLOGD" -N1 -f "$WORK/conf-check/rsyslog.conf" >"$WORK/conf-check/log" 2>&1 ||
    fail "rsyslogd rejects the config" "$WORK/conf-check/log"

log "check: $CHECK_COUNT messages through host and rsyslog"
jq -cn --argjson n "$CHECK_COUNT" --argjson t "$CHECK_SENT_AT" '
    range(0; $n) | select(. % 4 != 1)
    | { id: ., level: (["info", "debug", "warn", "error"][. % 4]), sent_at: $t,
        message: "generated message number \(.)", value: (. % 100),
        pipeline: "rules-to-jsonl" }' | jq -cS . | sort >"$WORK/expected.jsonl"
check_variant host start_host "host"
check_variant rsyslog start_rsyslog "rsyslogd"
check_same "host" "$WORK/check.host/norm.jsonl" "rsyslog" "$WORK/check.rsyslog/norm.jsonl"
check_same "expected" "$WORK/expected.jsonl" "host" "$WORK/check.host/norm.jsonl"
log "check: OK, host and rsyslog write the same $(kept "$CHECK_COUNT") records"
log "  host:    $(head -n1 "$WORK/check.host/out/events.jsonl")"
log "  rsyslog: $(head -n1 "$WORK/check.rsyslog/out/events.jsonl")"
rm -rf "$WORK/check.host" "$WORK/check.rsyslog"

if ((CHECK_ONLY)); then
    exit 0
fi

# ---------------------------------------------------------------------------------------
# Measure: round after round, the three variants back to back.

log "measuring: $COUNT messages per run ($(kept "$COUNT") kept), $ROUNDS rounds"
: >"$RESULTS"
for ((round = 1; round <= ROUNDS; round++)); do
    measure_pull "$round"
    measure_file_receiver host "$round" start_host "host"
    measure_file_receiver rsyslog "$round" start_rsyslog "rsyslogd"
done

# ---------------------------------------------------------------------------------------
# Report: medians over the rounds, and ratios.

median() { # VARIANT COLUMN (2 = rate, 3 = CPU)
    awk -v v="$1" -v c="$2" '$1 == v { print $c }' "$RESULTS" | sort -g |
        awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

pull_rate=$(median pull 2)
pull_cpu=$(median pull 3)
host_rate=$(median host 2)
host_cpu=$(median host 3)
rs_rate=$(median rsyslog 2)
rs_cpu=$(median rsyslog 3)

{
    echo "CPU: $CPU_MODEL ($(nproc) CPUs)"
    echo "rsyslog: ${RSYSLOG_VERSION:-unknown}"
    echo "$COUNT messages per run ($(kept "$COUNT") kept after the drop), $ROUNDS rounds, medians;"
    echo "rate: from the sender's start until the receiver has everything (one libzmq PUSH"
    echo "sender sharing the machine with the receiver: a rate can exceed neither what the"
    echo "sender manages next to that receiver nor what the receiver manages);"
    echo "CPU: the receiver's user + system time (all threads) per message sent"
    echo
    printf '%-22s %14s %18s\n' "variant" "msg/s" "CPU us/msg"
    printf '%-22s %14.0f %18.3f\n' "bare libzmq PULL" "$pull_rate" "$pull_cpu"
    printf '%-22s %14.0f %18.3f\n' "host rules -> jsonl" "$host_rate" "$host_cpu"
    printf '%-22s %14.0f %18.3f\n' "rsyslog (same work)" "$rs_rate" "$rs_cpu"
    echo
    awk -v h="$host_rate" -v p="$pull_rate" -v r="$rs_rate" -v hc="$host_cpu" -v rc="$rs_cpu" 'BEGIN {
        printf "rate  host / libzmq PULL: %.2f\n", h / p
        printf "rate  host / rsyslog:     %.2f\n", h / r
        if (hc > 0) printf "CPU   rsyslog / host:     %.2f\n", rc / hc
        else        printf "CPU   rsyslog / host:     n/a (host CPU below clock-tick resolution)\n"
    }'
}
