#!/usr/bin/env bash
# The compose fleet, tested for real: build the images, start 10 peers and Prometheus,
# store 500 values through one peer, fetch them through others, kill 2 peers, fetch all 500
# again, check Prometheus sees the live peers up with non-zero p2psip counters, tear down.
# Prints the image size and the fleet's start-up time (all peers joined).
# Skips (exit 0, with a message) when no Docker engine answers.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if ! docker info >/dev/null 2>&1; then
    echo "fleet test skipped: no Docker engine answers (docker info failed)"
    exit 0
fi
project="p2psip-fleet-test-$$"
port="${P2PSIP_PROMETHEUS_PORT:-$((19090 + $$ % 1000))}"
export P2PSIP_PROMETHEUS_PORT="$port"
if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
elif command -v docker-compose >/dev/null; then
    compose=(docker-compose)
else
    echo "fleet test skipped: neither 'docker compose' nor docker-compose is installed"
    exit 0
fi
dc() { "${compose[@]}" -p "$project" -f "$here/compose.yaml" "$@"; }
cleanup() {
    status=$?
    if [[ $status -ne 0 ]]; then
        echo "== fleet logs (last lines per container)"
        dc logs --tail 15 2>/dev/null || true
    fi
    dc down -v --remove-orphans >/dev/null 2>&1 || true
    exit $status
}
trap cleanup EXIT

"$here/build-image.sh"

peers=10
echo "== starting $peers peers and Prometheus"
t0=$(date +%s.%N)
dc up -d --scale peer=$((peers - 1)) >/dev/null
ids() { dc ps -q seed peer; }
# All peers joined: `p2psip health` (metrics answer, node joined) passes in every
# container (asked directly rather than waiting for Docker's 5 s health-check interval).
declare -A joined=()
for _ in $(seq 1 240); do
    for c in $(ids); do
        [[ -n "${joined[$c]:-}" ]] && continue
        docker exec "$c" /p2psip health >/dev/null 2>&1 && joined[$c]=1
    done
    healthy=${#joined[@]}
    [[ $healthy -eq $peers ]] && break
    sleep 0.2
done
t1=$(date +%s.%N)
[[ $healthy -eq $peers ]] || { echo "only $healthy of $peers peers joined"; exit 1; }
printf 'fleet start-up: %d peers joined in %.1f s\n' "$peers" "$(echo "$t1 - $t0" | bc)"

client() { # container, then the operation and its arguments
    local c="$1"; shift
    docker exec "$c" /p2psip client --peer 127.0.0.1:4700 --overlay fleet.p2psip \
        --log-level warn --timeout 5s "$@"
}
mapfile -t all < <(dc ps -q peer)
seed="$(dc ps -q seed)"
echo "== store 500 values through the seed, fetch them through two other peers"
client "$seed" store-many --count 500 --prefix fleet-
client "${all[0]}" check-many --count 500 --prefix fleet-
client "${all[1]}" check-many --count 500 --prefix fleet-

# Every value has 3 copies (replicas = 2) on consecutive ring positions, so any 2 peers
# killed at once leave a copy of each. (3 at once lose the values of an arc whenever the 3
# happen to be ring neighbours: 7 of the 84 choices here.)
echo "== docker kill 2 peers"
docker kill "${all[2]}" "${all[3]}" >/dev/null
# Bounded wait for the overlay to repair, then every value must still be there, through
# each of two peers. Each peer repairs its own view: it learns that a killed neighbour is
# gone when the link's QUIC idle timeout (45 s) runs out, so one peer finding everything
# says nothing yet of another that routes through a dead link.
found_all() {
    for _ in $(seq 1 20); do
        if client "$1" check-many --count 500 --prefix fleet-; then return 0; fi
        sleep 2
    done
    return 1
}
found_all "${all[5]}" || { echo "values lost after killing 2 peers (through a peer)"; exit 1; }
found_all "$seed" || { echo "values lost after killing 2 peers (through the seed)"; exit 1; }

echo "== Prometheus"
q() { curl -fsS "http://127.0.0.1:$port/api/v1/query" --data-urlencode "query=$1" | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "none")'; }
live=$((peers - 2))
up=none
for _ in $(seq 1 60); do
    up="$(q 'count(up{job="p2psip"} == 1)' || echo none)"
    [[ "$up" == "$live" ]] && break
    sleep 1
done
echo "targets up: $up (want $live)"
[[ "$up" == "$live" ]] || exit 1
msgs="$(q 'sum(p2psip_messages_total)')"
stores="$(q 'sum(p2psip_replication_stores_total)')"
echo "p2psip_messages_total: $msgs, p2psip_replication_stores_total: $stores"
python3 -c "import sys; sys.exit(0 if float('$msgs') > 0 and float('$stores') > 0 else 1)"
size=$(docker image inspect p2psip:latest --format '{{.Size}}')
printf 'image p2psip:latest: %.1f MiB\n' "$(echo "$size / 1048576" | bc -l)"
echo "fleet test passed"
