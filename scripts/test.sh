#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests, and integration tests (real curl, jq, DuckDB, pandas,
# polars, Node.js and Chromium clients) against a throwaway PostgreSQL cluster that pg_virtualenv creates and
# removes. Fails loudly if no Postgres can be had.
set -euo pipefail
cd "$(dirname "$0")/.."
# The build needs only a C compiler and make; everything else (Postgres, Chromium, Prometheus, the Python
# and Node clients) installs in the background meanwhile, into a log shown if it fails.
bash scripts/setup.sh build
mkdir -p target
clients() {
  bash scripts/setup.sh
  # The Python clients (DuckDB, pandas, polars, pyarrow) and the OpenAPI checkers, in a venv of their own
  # (Debian's Python refuses system-wide pip installs).
  local venv=target/client-venv
  if ! "$venv/bin/python" -c 'import duckdb, duckdb_extension_httpfs, duckdb_extension_json, openapi_spec_validator, schemathesis, pandas, polars, pyarrow' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check \
      duckdb==1.5.5 duckdb-extension-httpfs==1.5.5 duckdb-extension-json==1.5.5 openapi-spec-validator==0.7.2 schemathesis==4.32.5 \
      pandas==2.3.3 polars==1.35.2 pyarrow==26.0.1
  fi
  # playwright-core (pinned in tests/browser/package-lock.json) drives Debian's chromium; it downloads no browser.
  local locked installed
  locked=$(node -p 'require("./tests/browser/package-lock.json").packages["node_modules/playwright-core"].version')
  installed=$(node -p 'try { require("./tests/browser/node_modules/playwright-core/package.json").version } catch { "" }')
  if [ "$locked" != "$installed" ]; then
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
  fi
}
clients >target/clients-setup.log 2>&1 &
setup=$!
export PGSPOUT_TEST_PYTHON="$PWD/target/client-venv/bin/python"

cargo fmt --all -- --check
# Clippy lints the workspace as it is built for the tests: clippy-driver wraps rustc for the workspace's own
# crates only (as `cargo clippy` does), and -D warnings fails the build on any warning, clippy's included.
# Dependencies are compiled once, where `cargo clippy` and then `cargo test` compiled them twice (half of a
# cold run's time on two cores).
export RUSTC_WORKSPACE_WRAPPER="$(rustc --print sysroot)/bin/clippy-driver"
export RUSTFLAGS="-D warnings"
cargo build --all-targets --locked
if ! wait "$setup"; then
  cat target/clients-setup.log >&2
  echo "test: installing the test clients failed (above)" >&2
  exit 1
fi

# -t: a temporary cluster in /tmp; the PG* variables point the tests at it.
exec pg_virtualenv -t -- cargo test --all-targets --locked
