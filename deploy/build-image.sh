#!/usr/bin/env bash
# Builds the p2psip image (a statically linked binary in an empty image) and the
# project's Prometheus image (Debian's prometheus binary and the libraries it links).
# Usage: deploy/build-image.sh [--no-prometheus]
# Needs: Docker Engine; for the Prometheus image, Debian's `prometheus` package on the host.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
target=x86_64-unknown-linux-gnu

echo "== static p2psip binary"
# Its own target directory: the static build shares nothing with the normal one (other
# RUSTFLAGS), and a build started from inside `cargo test` must not wait on that one's lock.
export CARGO_TARGET_DIR="$root/target/static"
(cd "$root" && RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --release --locked --target "$target" -p p2psip-node --bin p2psip)
bin="$CARGO_TARGET_DIR/$target/release/p2psip"
if ldd "$bin" 2>&1 | grep -q '=>'; then
    echo "error: $bin is not statically linked" >&2
    exit 1
fi

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
cp "$bin" "$ctx/p2psip"
strip "$ctx/p2psip" 2>/dev/null || true
cp "$here/p2psip.toml" "$ctx/p2psip.toml"
cp "$here/Dockerfile" "$ctx/Dockerfile"
echo "== image p2psip:latest"
docker build -q -t p2psip:latest "$ctx" >/dev/null
docker image inspect p2psip:latest --format 'p2psip:latest {{.Size}} bytes'

if [[ "${1:-}" == "--no-prometheus" ]]; then
    exit 0
fi
prom="$(command -v prometheus || true)"
if [[ -z "$prom" ]]; then
    echo "error: no prometheus binary on this host (apt-get install prometheus)" >&2
    exit 1
fi
pctx="$(mktemp -d)"
trap 'rm -rf "$ctx" "$pctx"' EXIT
mkdir -p "$pctx/rootfs/bin" "$pctx/rootfs/etc/prometheus" "$pctx/rootfs/prometheus"
cp "$prom" "$pctx/rootfs/bin/prometheus"
# The shared libraries the binary links, at the paths the loader expects.
for lib in $(ldd "$prom" | grep -o '/[^ ]*'); do
    mkdir -p "$pctx/rootfs$(dirname "$lib")"
    cp -L "$lib" "$pctx/rootfs$lib"
done
cp "$here/prometheus/prometheus.yml" "$here/prometheus/alerts.yml" "$pctx/rootfs/etc/prometheus/"
cp "$here/prometheus/Dockerfile" "$pctx/Dockerfile"
echo "== image p2psip-prometheus:latest"
docker build -q -t p2psip-prometheus:latest "$pctx" >/dev/null
docker image inspect p2psip-prometheus:latest --format 'p2psip-prometheus:latest {{.Size}} bytes'
