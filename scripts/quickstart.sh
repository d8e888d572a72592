#!/usr/bin/env bash
# Starts the quickstart: the local mock LLM upstream on 127.0.0.1:18000 (plain) and :18443 (TLS),
# reached by the proxy as llm.quickstart.test, and tenant-proxy on its
# embedded defaults (file audit in ./audit-data, no external services). Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_apt cmake
cargo build --release -p tenant-proxy -p tenant-proxy-loadtest
bin=$CARGO_TARGET_DIR/release

scripts/quickstart-keys.sh "$bin" quickstart

"$bin/tenant-proxy" check --config quickstart/tenant-proxy.toml

# The mock LLM, plain and over TLS (certificate for llm.quickstart.test from the origin CA); the
# proxy reaches both under that name (`[egress.hosts]` in quickstart/tenant-proxy.toml).
"$bin/tenant-proxy-loadtest" mock --listen 127.0.0.1:18000 &
mock=$!
"$bin/tenant-proxy-loadtest" mock --listen 127.0.0.1:18443 --tls --name llm.quickstart.test \
  --ca-cert quickstart/origin-ca/ca.pem --ca-key quickstart/origin-ca/ca-key.pem &
mock_tls=$!
trap 'kill $mock $mock_tls 2>/dev/null || true' EXIT
"$bin/tenant-proxy" run --config quickstart/tenant-proxy.toml
