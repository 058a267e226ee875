#!/usr/bin/env bash
# The reliability and export-job tests, one at a time, printing the figures they measure (lines "figure: …"):
# disconnects and storms, stalled readers, Postgres restarts and half-open connections, shutdown, consistency,
# and background jobs through kill -9. They are part of scripts/test.sh too; this shows their numbers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --tests --locked
exec pg_virtualenv -t -- bash -c 'cargo test --locked --test api -- --test-threads=1 --nocapture \
  storm faults shutdown consistency jobs streaming 2>&1 | grep -E "^figure: |^test result|FAILED|panicked"'
