#!/usr/bin/env bash
# Benchmarks: criterion encoder benches (no database), then the end-to-end comparison with psql \copy on a
# throwaway cluster. BENCH_ROWS (default 1000000) and BENCH_RUNS (default 5) tune the latter.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo bench --bench encode
pg_virtualenv -t -- cargo bench --bench end_to_end
exec pg_virtualenv -t -- cargo bench --bench concurrency
