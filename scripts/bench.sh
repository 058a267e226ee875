#!/usr/bin/env bash
# Benchmarks: criterion encoder benches (no database), then the end-to-end comparison with psql \copy on a
# throwaway cluster, which also times "to an Arrow table in Python" against DuckDB's postgres scanner,
# ConnectorX and ADBC (in a venv of the bench's own). BENCH_ROWS (default 1000000) and BENCH_RUNS (default 5)
# tune the latter.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo bench --bench encode

venv=target/bench-venv
if ! "$venv/bin/python" -c 'import pyarrow, duckdb, duckdb_extension_postgres_scanner, connectorx, adbc_driver_postgresql' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check pyarrow==26.0.1 duckdb==1.5.5 \
    duckdb-extension-postgres-scanner==1.5.5 connectorx==0.4.6 adbc-driver-postgresql==1.13.0
fi
export BENCH_PYTHON="$PWD/$venv/bin/python"
pg_virtualenv -t -- cargo bench --bench end_to_end
exec pg_virtualenv -t -- cargo bench --bench concurrency
