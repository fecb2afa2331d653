#!/usr/bin/env bash
# p2psip against OpenDHT on loopback, in one run: fleets of N peers of each (N = 20 and
# 50 by default), one client each; prints a table with the ratio ours/theirs.
#   bash bench/opendht/run.sh [--nodes 20,50] [--count 1000] [--duration 10] [--window 64]
#                             [--write-docs docs/benchmarks.md] [--json out.json]
# Needs Debian's dhtnode and python3-opendht (installed here when missing and root).
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v dhtnode >/dev/null || ! /usr/bin/python3 -c 'import opendht' 2>/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        apt-get install -y -q dhtnode python3-opendht >/dev/null
    else
        echo "needs: apt-get install dhtnode python3-opendht" >&2
        exit 1
    fi
fi
cargo build --release -q -p p2psip-node
exec /usr/bin/python3 bench/opendht/compare.py "$@"
