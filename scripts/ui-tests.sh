#!/usr/bin/env bash
# The web dashboard end to end in a real browser: Debian's chromium and
# chromium-driver, driven by Selenium (PyPI) from pytest, against real daemons
# with real agents (crates/corral-cli/tests/ui/). Installs chromium and
# chromium-driver with apt when missing; FAILS, saying why, when they cannot
# be had. Screenshots go to $UI_SCREENSHOTS (default target/ui-screenshots).
# Usage: bash scripts/ui-tests.sh [PYTEST ARGS...]
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

have_browser() { command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; }
if ! have_browser; then
    echo "== installing chromium and chromium-driver (Debian)"
    if ! (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver); then
        echo "FAILED: the dashboard tests need Debian's chromium and chromium-driver, and apt could not install them" >&2
        exit 1
    fi
fi
have_browser || { echo "FAILED: chromium or chromedriver is still missing after installing" >&2; exit 1; }

cargo build --locked --quiet
bin="${CARGO_TARGET_DIR:-$root/target}/debug/corral"
test -x "$bin"

venv="$(mktemp -d "${TMPDIR:-/tmp}/corral-ui-venv.XXXXXX")"
trap 'rm -rf "$venv"' EXIT
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check selenium pytest
echo "== $(chromium --version 2>/dev/null | head -n1), $(chromedriver --version | head -n1)," \
    "selenium $("$venv/bin/python" -c 'import selenium; print(selenium.__version__)')"

export UI_SCREENSHOTS="${UI_SCREENSHOTS:-$root/target/ui-screenshots}"
mkdir -p "$UI_SCREENSHOTS"
CORRAL_BIN="$bin" "$venv/bin/python" -m pytest -v -rP -p no:cacheprovider crates/corral-cli/tests/ui "$@"
echo "== screenshots in $UI_SCREENSHOTS"
