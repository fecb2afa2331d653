#!/usr/bin/env bash
# The NAT lab: network namespaces and real Linux NAT (iptables) on this machine.
#
#   lab.sh up PREFIX     builds the lab, names prefixed with PREFIX (at most 6 characters)
#   lab.sh down PREFIX   kills what runs inside and removes every namespace of the lab
#
# Layout (198.51.100.0/24 is the "internet", a bridge in namespace PREFIXwan):
#   PREFIXp1 .1, PREFIXp2 .2, PREFIXp3 .3         public peers
#   PREFIXra .11 -- 10.0.1.0/24 -- PREFIXa .2     NAT A: MASQUERADE (port-preserving)
#   PREFIXrb .12 -- 10.0.2.0/24 -- PREFIXb .2     NAT B: MASQUERADE (port-preserving)
#   PREFIXrs .13 -- 10.0.3.0/24 -- PREFIXs .2     NAT S: MASQUERADE --random-fully
#                                                  (a new port per destination: "symmetric")
# Every router drops unsolicited inbound traffic (forwarded or for itself); replies to what
# went out pass; idle UDP mappings expire after 5 s. Needs root, iproute2 and iptables. Every command is checked: a lab that
# cannot be built is torn down and the script fails with the command that failed.
set -euo pipefail

cmd=${1:-}
P=${2:-}
if [ -z "$cmd" ] || [ -z "$P" ] || [ "${#P}" -gt 6 ]; then
    echo "usage: $0 up|down PREFIX (PREFIX: 1 to 6 characters)" >&2
    exit 2
fi
NAMESPACES="wan p1 p2 p3 ra rb rs a b s"

down() {
    for n in $NAMESPACES; do
        ns="$P$n"
        if ip netns list | grep -qw "$ns"; then
            for pid in $(ip netns pids "$ns" 2>/dev/null); do
                kill -9 "$pid" 2>/dev/null || true
            done
            ip netns del "$ns" 2>/dev/null || true
        fi
    done
}

up() {
    for tool in ip iptables; do
        command -v "$tool" >/dev/null || { echo "natlab: $tool is missing" >&2; exit 3; }
    done
    [ "$(id -u)" = 0 ] || { echo "natlab: needs root (network namespaces, iptables)" >&2; exit 3; }
    trap 'echo "natlab: failed at line $LINENO: $BASH_COMMAND" >&2; down' ERR
    for n in $NAMESPACES; do
        ip netns add "$P$n"
        ip -n "$P$n" link set lo up
    done
    W="${P}wan"
    ip -n "$W" link add br0 type bridge
    ip -n "$W" link set br0 up
    # A link from the bridge to namespace $1 (interface $2 there, address $3).
    wire() {
        ip -n "$W" link add "$1" type veth peer name "$2" netns "$P$1"
        ip -n "$W" link set "$1" master br0 up
        ip -n "$P$1" addr add "$3" dev "$2"
        ip -n "$P$1" link set "$2" up
    }
    wire p1 eth0 198.51.100.1/24
    wire p2 eth0 198.51.100.2/24
    wire p3 eth0 198.51.100.3/24
    local i=0
    for h in a b s; do
        i=$((i + 1))
        r="r$h"
        wire "$r" wan0 "198.51.100.1$i/24"
        ip -n "$P$r" link add lan0 type veth peer name eth0 netns "$P$h"
        ip -n "$P$r" addr add "10.0.$i.1/24" dev lan0
        ip -n "$P$r" link set lan0 up
        ip -n "$P$h" addr add "10.0.$i.2/24" dev eth0
        ip -n "$P$h" link set eth0 up
        ip -n "$P$h" route add default via "10.0.$i.1"
        ip netns exec "$P$r" sysctl -qw net.ipv4.ip_forward=1
        local random=()
        [ "$h" = s ] && random=(--random-fully)
        ip netns exec "$P$r" iptables -t nat -A POSTROUTING -o wan0 -j MASQUERADE "${random[@]}"
        for chain in FORWARD INPUT; do
            ip netns exec "$P$r" iptables -A "$chain" -i wan0 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
            ip netns exec "$P$r" iptables -A "$chain" -i wan0 -j DROP
        done
        # Idle UDP mappings expire after 5 s (Linux: 30 s / 120 s), so that only the nodes'
        # keep-alives hold their NAT bindings open through a pause.
        ip netns exec "$P$r" sysctl -qw net.netfilter.nf_conntrack_udp_timeout=5 \
            net.netfilter.nf_conntrack_udp_timeout_stream=5
    done
    trap - ERR
}

case "$cmd" in
    up) down; up ;;
    down) down ;;
    *) echo "usage: $0 up|down PREFIX" >&2; exit 2 ;;
esac
