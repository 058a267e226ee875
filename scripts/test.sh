#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests, and integration tests (real curl, jq, DuckDB, pandas,
# polars, Node.js and Chromium clients) against a throwaway PostgreSQL cluster that pg_virtualenv creates and
# removes. Fails loudly if no Postgres can be had.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# The Python clients (DuckDB, pandas, polars, pyarrow) and the OpenAPI checkers, in a venv of their own (Debian's
# Python refuses system-wide pip installs).
venv=target/client-venv
if ! "$venv/bin/python" -c 'import duckdb, duckdb_extension_httpfs, duckdb_extension_json, openapi_spec_validator, schemathesis, pandas, polars, pyarrow' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check \
    duckdb==1.5.5 duckdb-extension-httpfs==1.5.5 duckdb-extension-json==1.5.5 openapi-spec-validator==0.7.2 schemathesis==4.32.5 \
    pandas==2.3.3 polars==1.35.2 pyarrow==26.0.1
fi
export PGSPOUT_TEST_PYTHON="$PWD/$venv/bin/python"

# playwright-core (pinned in tests/browser/package-lock.json) drives Debian's chromium; it downloads no browser.
locked=$(node -p 'require("./tests/browser/package-lock.json").packages["node_modules/playwright-core"].version')
installed=$(node -p 'try { require("./tests/browser/node_modules/playwright-core/package.json").version } catch { "" }')
if [ "$locked" != "$installed" ]; then
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
fi

cargo fmt --all -- --check
# Clippy lints the workspace as it is built for the tests: clippy-driver wraps rustc for the workspace's own
# crates only (as `cargo clippy` does), and -D warnings fails the build on any warning, clippy's included.
# Dependencies are compiled once, where `cargo clippy` and then `cargo test` compiled them twice (half of a
# cold run's time on two cores).
export RUSTC_WORKSPACE_WRAPPER="$(rustc --print sysroot)/bin/clippy-driver"
export RUSTFLAGS="-D warnings"
cargo build --all-targets --locked

# -t: a temporary cluster in /tmp; the PG* variables point the tests at it.
exec pg_virtualenv -t -- cargo test --all-targets --locked
