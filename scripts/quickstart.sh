#!/usr/bin/env bash
# Starts the quickstart: the local mock LLM upstream on 127.0.0.1:18000 and tenant-proxy on its
# embedded defaults (file audit in ./audit-data, no external services). Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_apt cmake
cargo build --release -p tenant-proxy -p tenant-proxy-loadtest
bin=$CARGO_TARGET_DIR/release

# A development signing key for `tenant-proxy token mint`; generated once, never committed.
if [ ! -f quickstart/keys/dev-signing-key.pem ] || [ ! -f quickstart/keys/jwks.json ]; then
  rm -f quickstart/keys/jwks.json
  "$bin/tenant-proxy" token keygen --kid dev --out quickstart/keys/dev-signing-key.pem --jwks quickstart/keys/jwks.json
fi

# The interception CA for HTTPS tunnels; generated once, never committed. First: every command
# that reads the configuration (`cred put` below included) checks that the CA files exist.
if [ ! -f quickstart/ca/ca.pem ] || [ ! -f quickstart/ca/ca-key.pem ]; then
  rm -rf quickstart/ca
  "$bin/tenant-proxy" ca init --out quickstart/ca
fi

# A master key and a vault with demo keys bound to the local mock; generated once, never committed.
if [ ! -f quickstart/keys/master.key ] || [ ! -f quickstart/keys/vault.json ]; then
  rm -f quickstart/keys/vault.json
  "$bin/tenant-proxy" cred init-master --out quickstart/keys/master.key
  printf %s "sk-quickstart-acme-demo" | "$bin/tenant-proxy" cred --config quickstart/tenant-proxy.toml \
    put --tenant acme --name openai --bind 127.0.0.1 --in header
  printf %s "sk-quickstart-globex-demo" | "$bin/tenant-proxy" cred --config quickstart/tenant-proxy.toml \
    put --tenant globex --name openai --bind 127.0.0.1 --in header
fi

"$bin/tenant-proxy" check --config quickstart/tenant-proxy.toml

"$bin/tenant-proxy-loadtest" mock --listen 127.0.0.1:18000 &
mock=$!
trap 'kill $mock 2>/dev/null || true' EXIT
"$bin/tenant-proxy" run --config quickstart/tenant-proxy.toml
