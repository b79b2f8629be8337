#!/usr/bin/env bash
# `corral mcp` end to end with an MCP client corral did not write: the official
# MCP Python SDK (`mcp` on PyPI), installed into a throwaway venv.
#
# Builds the binary, makes a temp venv, installs mcp and pytest, and runs the
# tests in crates/corral-cli/tests/mcp/: test_mcp.py (every tool, errors,
# protocol versions, the size of tools/list) and test_coordinator.py (a scripted
# coordinator running a 20-agent team through MCP alone). Each test gives the
# server a private state dir and stops the daemon the server autostarted; this
# script removes the venv. Exits non-zero when anything fails.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

cargo build --locked --quiet
bin="${CARGO_TARGET_DIR:-$root/target}/debug/corral"
test -x "$bin"

venv="$(mktemp -d "${TMPDIR:-/tmp}/corral-mcp-venv.XXXXXX")"
trap 'rm -rf "$venv"' EXIT

python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check mcp pytest
"$venv/bin/python" -c 'import importlib.metadata as m; print("mcp", m.version("mcp"), "pytest", m.version("pytest"))'

CORRAL_BIN="$bin" "$venv/bin/python" -m pytest -v -rP -p no:cacheprovider \
    crates/corral-cli/tests/mcp/test_mcp.py crates/corral-cli/tests/mcp/test_coordinator.py
