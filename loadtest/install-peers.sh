#!/bin/sh
# Installs the servers `tenant-proxy-loadtest run` compares tenant-proxy with (the `nginx`,
# `haproxy` and `squid` rows), with apt, on a Debian or Ubuntu machine. Optional: a row whose
# binary is not on PATH is skipped with a note, and CI never runs them.
#
# The packages' own services are not started (a policy-rc.d refuses them for the duration of the
# install): the load test starts each server itself, on loopback ports it picks, with a config
# of its own in a temp dir.
#
#   sudo loadtest/install-peers.sh
set -eu

if [ "$(id -u)" -ne 0 ]; then
    echo "install-peers.sh: run as root (apt-get install)" >&2
    exit 1
fi

policy=/usr/sbin/policy-rc.d
had_policy=no
if [ -e "$policy" ]; then
    had_policy=yes
    cp -p "$policy" "$policy.install-peers"
fi
restore() {
    if [ "$had_policy" = yes ]; then
        mv "$policy.install-peers" "$policy"
    else
        rm -f "$policy"
    fi
}
trap restore EXIT
# 101: "action not allowed": the packages install without starting their services.
printf '#!/bin/sh\nexit 101\n' > "$policy"
chmod 755 "$policy"

apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    nginx-light haproxy squid || \
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    nginx haproxy squid

for bin in nginx haproxy squid; do
    if command -v "$bin" >/dev/null 2>&1; then
        echo "$bin: $(command -v "$bin")"
    else
        # Debian puts them in /usr/sbin, which is not on every user's PATH.
        echo "$bin: not on PATH (look in /usr/sbin)" >&2
    fi
done
