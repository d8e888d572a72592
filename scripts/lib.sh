# Shared helpers for the scripts: install what is missing, print what was done.

# ensure_apt PKG [COMMAND [APT_OPTION...]]: install a Debian package when COMMAND (default PKG)
# is missing, with extra apt-get options (e.g. --no-install-recommends).
ensure_apt() {
  local pkg=$1 cmd=${2:-$1}
  shift; shift || true
  if command -v "$cmd" >/dev/null 2>&1; then return 0; fi
  echo "installing $pkg (needed: $cmd)" >&2
  local sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  # Exported: scripts this one starts (scripts/check-deploy.sh) need no second update.
  if [ -z "${TP_APT_UPDATED:-}" ]; then $sudo apt-get update -qq; export TP_APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" "$pkg" >/dev/null
}

# ensure_py MODULE [PIP_NAME]: install a Python package when it cannot be imported.
ensure_py() {
  local module=$1 pkg=${2:-$1}
  if python3 -c "import $module" >/dev/null 2>&1; then return 0; fi
  echo "installing Python package $pkg" >&2
  python3 -m pip install --quiet --disable-pip-version-check "$pkg"
}

# A target directory outside the clone keeps builds incremental across fresh clones.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tenant-proxy/target}
