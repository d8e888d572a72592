#!/usr/bin/env bash
# Starts the quickstart: the local mock LLM upstream on 127.0.0.1:18000 and tenant-proxy on its
# embedded defaults (file audit in ./audit-data, no external services). Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_apt cmake
cargo build --release -p tenant-proxy -p tenant-proxy-loadtest
bin=$CARGO_TARGET_DIR/release

scripts/quickstart-keys.sh "$bin" quickstart

"$bin/tenant-proxy" check --config quickstart/tenant-proxy.toml

"$bin/tenant-proxy-loadtest" mock --listen 127.0.0.1:18000 &
mock=$!
trap 'kill $mock 2>/dev/null || true' EXIT
"$bin/tenant-proxy" run --config quickstart/tenant-proxy.toml
