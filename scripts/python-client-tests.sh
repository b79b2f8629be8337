#!/usr/bin/env bash
# Runs the Python client's tests against the corral binary built from this
# repository, in a throwaway venv. Usage: bash scripts/python-client-tests.sh [PYTEST ARGS...]
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

# Always the binary of this tree (a no-op when it is up to date).
cargo build --locked --quiet
bin="${CORRAL_BIN:-${CARGO_TARGET_DIR:-$repo/target}/debug/corral}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

python3 -m venv "$work/venv"
# Install from a copy, so no build output lands in the tree (or stale output in the wheel).
cp -r clients/python "$work/src"
rm -rf "$work/src/build" "$work/src"/*.egg-info
"$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check "$work/src" pytest prometheus_client

CORRAL_BIN="$bin" "$work/venv/bin/python" -m pytest -q -p no:cacheprovider clients/python/tests "$@"
