#!/usr/bin/env bash
# Runs the Python client's checks and tests against the corral binary built
# from this repository, each Python in a throwaway venv: ruff and mypy, then
# the tests on the default python3, then the tests again on Python 3.9 (the
# oldest the package supports) when an interpreter for it is found — else it
# says so, with the reason. Usage: bash scripts/python-client-tests.sh [PYTEST ARGS...]
#
# A 3.9 interpreter is $CORRAL_PY39, else python3.9 on PATH, else pyenv's: the first that works.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

# Always the binary of this tree (a no-op when it is up to date).
cargo build --locked --quiet
bin="${CORRAL_BIN:-${CARGO_TARGET_DIR:-$repo/target}/debug/corral}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Install from a copy, so no build output lands in the tree (or stale output in the wheel).
cp -r clients/python "$work/src"
rm -rf "$work/src/build" "$work/src"/*.egg-info

# venv NAME PYTHON [EXTRA PACKAGES...]: the package and pytest installed for PYTHON.
venv() {
    local name=$1 python=$2
    shift 2
    "$python" -m venv "$work/$name"
    "$work/$name/bin/python" -m pip install --quiet --disable-pip-version-check "$work/src" pytest prometheus_client "$@"
}

run_tests() {
    local name=$1
    shift
    echo "== Python client tests on $("$work/$name/bin/python" --version)"
    CORRAL_BIN="$bin" "$work/$name/bin/python" -m pytest -q -p no:cacheprovider clients/python/tests "$@"
}

venv default python3 ruff==0.17.6 mypy==2.4.1
echo "== ruff and mypy (strict) on clients/python"
(cd clients/python && "$work/default/bin/ruff" check . && "$work/default/bin/ruff" format --check corral_client tests \
    && "$work/default/bin/mypy" corral_client tests)
run_tests default "$@"

# The first candidate that is a working Python 3.9 (a pyenv shim may name a version that is not installed).
candidates=()
[[ -n ${CORRAL_PY39:-} ]] && candidates+=("$CORRAL_PY39")
command -v python3.9 >/dev/null 2>&1 && candidates+=("$(command -v python3.9)")
for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.9*/bin/python3; do
    [[ -x $candidate ]] && candidates+=("$candidate")
done
py39=""
for candidate in "${candidates[@]}"; do
    if "$candidate" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info[:2] != (3, 9))' >/dev/null 2>&1; then
        py39=$candidate
        break
    fi
done
if [[ -z $py39 ]]; then
    tried="${candidates[*]:-none: CORRAL_PY39 unset, no python3.9 on PATH, nothing in ${PYENV_ROOT:-$HOME/.pyenv}/versions}"
    echo "== SKIPPED the tests on Python 3.9: no working Python 3.9 with venv found (tried: $tried);" \
        "they ran on $(python3 --version) only"
    exit 0
fi
venv py39 "$py39"
run_tests py39 "$@"
