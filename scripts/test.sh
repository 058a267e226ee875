#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests, and integration tests against a throwaway
# PostgreSQL cluster that pg_virtualenv creates and removes. Fails loudly if no Postgres can be had.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo build --all-targets --locked

# -t: a temporary cluster in /tmp; PG* variables point the tests at it.
exec pg_virtualenv -t -- cargo test --all-targets --locked -- --test-threads 2
