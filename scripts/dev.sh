#!/usr/bin/env bash
# One entry point for a fresh Debian machine (run as root):
#   scripts/dev.sh test   install what is missing, then lint, typecheck and the whole test suite
#   scripts/dev.sh demo   install what is missing, then walk a job through its whole life
#   scripts/dev.sh setup  only install
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  openssh-server openssh-client python3 util-linux procps iproute2 lsof
  golang-go golang-github-hashicorp-go-plugin-dev golang-github-zclconf-go-cty-dev
  golang-github-hashicorp-hcl-v2-dev golang-google-grpc-dev golang-goprotobuf-dev
  protobuf-compiler
)

log() { printf '==> %s\n' "$*" >&2; }

install_debian_packages() {
  local missing=()
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
      || missing+=("$pkg")
  done
  if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    missing+=(python3-venv)
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
      log "missing Debian packages: ${missing[*]} (run as root, or install them first)"
      exit 1
    fi
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# The virtualenv holds exactly requirements/dev.lock (hash-checked) and the project. It is
# made anew whenever the lock or pyproject.toml changes, so nothing outside the lock lingers.
install_python_environment() {
  local want
  want=$(cat requirements/dev.lock pyproject.toml | sha256sum | cut -d' ' -f1)
  if [ -x .venv/bin/python ] && [ "$(cat .venv/.installed 2>/dev/null)" = "$want" ]; then
    return
  fi
  log "installing requirements/dev.lock and the project into a new .venv"
  rm -rf .venv
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-input \
    --require-hashes --no-deps -r requirements/dev.lock
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-input \
    --no-deps --no-build-isolation -e .
  echo "$want" > .venv/.installed
}

setup() {
  install_debian_packages
  install_python_environment
}

case "${1:-}" in
  setup) setup ;;
  test) setup; shift; exec .venv/bin/nox -s lint typecheck tests -- "$@" ;;
  demo) setup; shift; exec .venv/bin/python -m tests.demo "$@" ;;
  *) echo "usage: scripts/dev.sh test|demo|setup" >&2; exit 2 ;;
esac
