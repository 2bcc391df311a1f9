# Sourced by the scripts beside it that run the host on a pipeline and feed it: free ports,
# the host's /metrics, and waiting for it to come up and to settle every message.

# A TCP port nothing listens on now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The value of metric $1 on the host's admin listener $ADMIN.
metric() { curl -s --max-time 5 "http://$ADMIN/metrics" | awk -v m="$1" '$1 == m {print $2}'; }

# Waits until the host (pid $1, stderr in file $2) serves /metrics; fails if it exits.
wait_for_host() {
    for _ in $(seq 1 600); do
        [[ -n $(metric host_messages_received_total) ]] && return 0
        kill -0 "$1" 2>/dev/null || { cat "$2" >&2; return 1; }
        sleep 0.2
    done
    echo "the host did not come up" >&2
    return 1
}

# Waits until the host has received $1 messages and none is in flight, looking every $2
# seconds (each look at /metrics is work the host counts); fails after 300 looks.
wait_settled() {
    local received in_flight
    for _ in $(seq 1 300); do
        received=$(metric host_messages_received_total)
        in_flight=$(metric host_messages_in_flight)
        [[ ${received:-0} == "$1" && ${in_flight:-1} == 0 ]] && return 0
        sleep "$2"
    done
    echo "the host received ${received:-0} of $1 messages" >&2
    return 1
}
