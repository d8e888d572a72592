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
ensure_apt ca-certificates update-ca-certificates
# The transparent-capture tests: network namespaces, capture rules, a proxy-unaware Go client.
ensure_apt iproute2 ip
ensure_apt nftables nft
ensure_apt iptables iptables
ensure_apt util-linux setpriv
ensure_apt golang-go go
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
