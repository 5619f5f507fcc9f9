#!/bin/sh
# Install nomad-driver-tart into a virtualenv of its own, with exactly the dependency
# versions of requirements/runtime.lock (hash-checked) and the build backend of
# requirements/build.lock. For a Mac that runs the Nomad client:
#
#   sudo scripts/install.sh [PREFIX]          # default PREFIX: /opt/nomad-driver-tart
#   sudo ln -sf PREFIX/bin/nomad-driver-tart /opt/nomad/plugins/nomad-driver-tart
#
# PYTHON names the interpreter (default: python3), e.g. PYTHON=/opt/homebrew/bin/python3.12.
# An existing PREFIX is emptied first, so nothing from an earlier install lingers.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
prefix=${1:-/opt/nomad-driver-tart}
python=${PYTHON:-python3}
pip_args="--quiet --disable-pip-version-check --no-input"

"$python" -m venv --clear "$prefix"
# shellcheck disable=SC2086
"$prefix/bin/python" -m pip install $pip_args --require-hashes --no-deps \
  -r "$here/requirements/runtime.lock" -r "$here/requirements/build.lock"
# Build from a copy: a checkout's build/ may hold modules of an older tree.
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
cp -R "$here/pyproject.toml" "$here/README.md" "$here/tart_trio" "$src/"
# shellcheck disable=SC2086
"$prefix/bin/python" -m pip install $pip_args --no-deps --no-build-isolation "$src"
"$prefix/bin/nomad-driver-tart" --version
echo "installed: $prefix/bin/nomad-driver-tart"
