#!/usr/bin/env bash
# Idle cost of a peer: fleets of idle `p2psip node` processes on loopback, one fleet per
# binary given, all running side by side (so they share the machine's conditions); after a
# warm-up, the CPU time of every thread of every peer (/proc/PID/task/*/schedstat, in ns)
# over a window, and the epoll wake-ups of one peer of each fleet (strace -c, if present).
#   bash bench/idle/run.sh [--peers 10] [--warm 60] [--window 120] [BINARY ...]
# Without a binary: target/release/p2psip (built first). To compare two commits, build each
# and copy its binary aside, e.g. git stash; cargo build --release -p p2psip-node;
# cp target/release/p2psip /tmp/p2psip-before; git stash pop.
set -euo pipefail
cd "$(dirname "$0")/../.."
peers=10 warm=60 window=120 bins=()
while [ $# -gt 0 ]; do
    case "$1" in
        --peers) peers=$2; shift 2 ;;
        --warm) warm=$2; shift 2 ;;
        --window) window=$2; shift 2 ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) bins+=("$1"); shift ;;
    esac
done
if [ ${#bins[@]} -eq 0 ]; then
    cargo build --release -q -p p2psip-node --bin p2psip
    bins=(target/release/p2psip)
fi
work=$(mktemp -d /tmp/p2psip-idle.XXXX)
cleanup() { pkill -f -- "--overlay idle-$$-" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
# Each fleet: peer 0 forms the overlay on a port the kernel picks, the others join it.
port_of() { # the UDP port a node printed in its log ("listening on 127.0.0.1:PORT")
    for _ in $(seq 100); do
        p=$(grep -o 'listening on [0-9.]*:[0-9]*' "$1" 2>/dev/null | head -1 | sed 's/.*://')
        [ -n "$p" ] && { echo "$p"; return; }
        sleep 0.1
    done
    echo "no listening line in $1" >&2; exit 1
}
for f in "${!bins[@]}"; do
    b=${bins[$f]}; d=$work/f$f; mkdir -p "$d"
    "$b" node --overlay "idle-$$-$f" --listen 127.0.0.1:0 --data-dir "$d/0" </dev/null >"$d/0.log" 2>&1 &
    boot=127.0.0.1:$(port_of "$d/0.log")
    for i in $(seq 1 $((peers - 1))); do
        "$b" node --overlay "idle-$$-$f" --listen 127.0.0.1:0 --bootstrap "$boot" \
            --data-dir "$d/$i" </dev/null >"$d/$i.log" 2>&1 &
    done
done
echo "$(( ${#bins[@]} * peers )) idle peers started; warming up ${warm} s, then ${window} s of CPU" >&2
sleep "$warm"
cpu_ns() { # total run time of every thread of fleet $1, ns
    local t=0
    for p in $(pgrep -f -- "--overlay idle-$$-$1( |$)"); do
        for s in /proc/"$p"/task/*/schedstat; do
            read -r ns _ < "$s" 2>/dev/null && t=$((t + ns))
        done
    done
    echo $t
}
before=(); for f in "${!bins[@]}"; do before[$f]=$(cpu_ns "$f"); done
sleep "$window"
first=""
for f in "${!bins[@]}"; do
    after=$(cpu_ns "$f")
    pct=$(awk -v a="$after" -v b="${before[$f]}" -v w="$window" -v n="$peers" \
        'BEGIN { printf "%.4f", (a - b) / 1e9 / w / n * 100 }')
    wake=""
    if command -v strace >/dev/null; then
        p=$(pgrep -f -- "--overlay idle-$$-$f( |$)" | sed -n 2p)
        n=$( (timeout 20 strace -f -c -e trace=epoll_wait -p "$p" 2>&1 || true) | awk '/epoll_wait/ {print $4}')
        [ -n "$n" ] && wake=", $(awk -v n="$n" 'BEGIN { printf "%.1f", n / 20 }') epoll wake-ups/s"
    fi
    ratio=""
    if [ -z "$first" ]; then first=$pct; else
        ratio=" (x$(awk -v a="$pct" -v b="$first" 'BEGIN { printf "%.2f", a / b }') of the first)"
    fi
    echo "${bins[$f]}: CPU per idle peer ${pct} % of a core${wake}${ratio}"
done
