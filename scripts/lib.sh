# shellcheck shell=bash
# Shared helpers for scripts/bootstrap, scripts/deploy and scripts/test.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MLFLOW_DEV_VENV:-$REPO_ROOT/.venv}"
DEV_PYTHON="${MLFLOW_DEV_PYTHON:-python3}"
COLLECTIONS_DIR="$REPO_ROOT/.cache/collections"
export ANSIBLE_COLLECTIONS_PATH="$COLLECTIONS_DIR"
export ANSIBLE_CONFIG="$REPO_ROOT/ansible.cfg"
export ANSIBLE_INJECT_FACT_VARS=false

log() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

# OS packages: the union of every apt-packages.txt the project keeps.
apt_packages() {
  cat "$REPO_ROOT/scripts/apt-packages.txt" "$REPO_ROOT"/tests/*/apt-packages.txt 2>/dev/null \
    | sed -e 's/#.*//' -e 's/[[:space:]]//g' | grep -v '^$' | sort -u
}

ensure_os_packages() {
  local missing=() pkg
  while read -r pkg; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done < <(apt_packages)
  if ((${#missing[@]})); then
    [[ $EUID -eq 0 ]] || die "run as root to install: ${missing[*]}"
    log "Installing OS packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

ensure_venv() {
  local stamp="$VENV/.requirements.sha256" want
  want="$(cat "$REPO_ROOT/requirements-dev.txt" "$REPO_ROOT/constraints-dev.txt" | sha256sum | cut -d' ' -f1)"
  if [[ -x "$VENV/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return 0
  fi
  log "Building the toolchain virtualenv $VENV"
  [[ -x "$VENV/bin/python" ]] || "$DEV_PYTHON" -m venv "$VENV"
  (cd "$REPO_ROOT" && "$VENV/bin/python" -m pip install -q -r requirements-dev.txt)
  echo "$want" > "$stamp"
}

# Make this checkout importable as the collection mlops.mlflow.
link_collection() {
  mkdir -p "$COLLECTIONS_DIR/ansible_collections/mlops"
  ln -sfn "$REPO_ROOT" "$COLLECTIONS_DIR/ansible_collections/mlops/mlflow"
}

bootstrap() {
  ensure_os_packages
  ensure_venv
  link_collection
  export PATH="$VENV/bin:$PATH"
}
