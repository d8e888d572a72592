#!/bin/sh
# Creates the quickstart's keys once (never committed): the development token signing key, the
# interception CA, the origin CA of the TLS mock and the credential vault with demo keys bound to
# the local mock (llm.quickstart.test). Used by
# scripts/quickstart.sh and by docker-compose.yml's `init` service.
#   quickstart-keys.sh BIN_DIR QUICKSTART_DIR
set -eu
bin=$1
qs=$2

# A development signing key for `tenant-proxy token mint`.
if [ ! -f "$qs/keys/dev-signing-key.pem" ] || [ ! -f "$qs/keys/jwks.json" ]; then
  rm -f "$qs/keys/jwks.json"
  "$bin/tenant-proxy" token keygen --kid dev --out "$qs/keys/dev-signing-key.pem" --jwks "$qs/keys/jwks.json"
fi

# The interception CA for HTTPS tunnels. First: every command that reads the configuration
# (`cred put` below included) checks that the CA files exist.
if [ ! -f "$qs/ca/ca.pem" ] || [ ! -f "$qs/ca/ca-key.pem" ]; then
  rm -rf "$qs/ca"
  "$bin/tenant-proxy" ca init --out "$qs/ca"
fi

# The origin CA of the quickstart's TLS mock (`tenant-proxy-loadtest mock --tls`, which mints
# its certificate from it at start): `[upstream] extra_ca_files` trusts it. Limited to the mock's
# name, so nothing else it could sign is trusted.
if [ ! -f "$qs/origin-ca/ca.pem" ] || [ ! -f "$qs/origin-ca/ca-key.pem" ]; then
  rm -rf "$qs/origin-ca"
  "$bin/tenant-proxy" ca init --out "$qs/origin-ca" --name "tenant-proxy quickstart origin CA" \
    --permit llm.quickstart.test
  echo "(that one is the mock upstream's CA: only the proxy trusts it, through [upstream] extra_ca_files;"
  echo " clients trust the interception CA in $qs/ca)"
fi

# A master key and a vault with demo keys bound to the local mock.
if [ ! -f "$qs/keys/master.key" ] || [ ! -f "$qs/keys/vault.json" ]; then
  rm -f "$qs/keys/vault.json"
  "$bin/tenant-proxy" cred init-master --out "$qs/keys/master.key"
  printf %s "sk-quickstart-acme-demo" | "$bin/tenant-proxy" cred --config "$qs/tenant-proxy.toml" \
    put --tenant acme --name openai --bind llm.quickstart.test/v1 --in header
  printf %s "sk-quickstart-globex-demo" | "$bin/tenant-proxy" cred --config "$qs/tenant-proxy.toml" \
    put --tenant globex --name openai --bind llm.quickstart.test/v1 --in header
fi
