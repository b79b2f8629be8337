#!/usr/bin/env bash
# Runs the TypeScript client's tests (Node's own test runner) against the
# corral binary built from this repository: every test file starts its own
# daemons in private temp state dirs. The drift test fails when
# clients/typescript/src/schema.ts is not what `corral openapi` generates.
# Usage: bash scripts/typescript-client-tests.sh [NODE --test ARGS...]
# Leaves only node_modules/ and dist/ in clients/typescript (both ignored by git).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

# Always the binary of this tree (a no-op when it is up to date).
cargo build --locked --quiet
bin="${CORRAL_BIN:-${CARGO_TARGET_DIR:-$repo/target}/debug/corral}"

if ! node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' 2>/dev/null; then
    echo "error: the TypeScript client needs Node.js 20 or newer; found: $(node --version 2>/dev/null || echo none)" >&2
    exit 1
fi

cd clients/typescript
npm ci --no-audit --no-fund --loglevel=error
npm run --silent build
npm run --silent lint
if (($#)); then
    CORRAL_BIN="$bin" node --test --test-reporter=spec "$@"
else
    CORRAL_BIN="$bin" npm test --silent
fi
