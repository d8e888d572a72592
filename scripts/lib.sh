# Shared helpers for the scripts: install what is missing, print what was done.

# ensure_apt PKG [COMMAND]: install a Debian package when COMMAND (default PKG) is missing.
ensure_apt() {
  local pkg=$1 cmd=${2:-$1}
  if command -v "$cmd" >/dev/null 2>&1; then return 0; fi
  echo "installing $pkg (needed: $cmd)" >&2
  local sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  if [ -z "${TP_APT_UPDATED:-}" ]; then $sudo apt-get update -qq; TP_APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$pkg" >/dev/null
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
