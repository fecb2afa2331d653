#!/usr/bin/env bash
# p2psip's SIP front-ends against Kamailio 5.6 as registrar and proxy, on loopback, in one
# run: alice (SIPp) registers with her password, SIPp calls her; set-up median/p99 at a
# steady rate, and the highest rate of a step series with under 1% failed calls. Prints
# a table with the ratio ours/theirs.
#   bash bench/kamailio/run.sh [--rates 250,500,1000,2000,4000] [--step-seconds 5]
#                              [--latency-calls 1000] [--latency-rate 50] [--json out.json]
# Needs Debian's kamailio and sip-tester (installed here when missing and root).
set -euo pipefail
cd "$(dirname "$0")/../.."
need=()
command -v kamailio >/dev/null || need+=(kamailio)
command -v sipp >/dev/null || need+=(sip-tester)
if [ "${#need[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
    else
        echo "needs: apt-get install ${need[*]}" >&2
        exit 1
    fi
fi
cargo build --release -q -p p2psip-node
exec python3 bench/kamailio/compare.py "$@"
