#!/usr/bin/env bash
# The demo: pgspout on a throwaway PostgreSQL seeded with a 1M-row `orders` table, on 127.0.0.1:8080
# (PGSPOUT_LISTEN overrides; DEMO_ROWS sets the row count). Ctrl-C stops it and removes the cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --locked

if [ "${1:-}" != "--inside" ]; then
  exec pg_virtualenv -t -- bash "$0" --inside
fi

rows="${DEMO_ROWS:-1000000}"
echo "seeding $rows orders…"
psql -X -q -v rows="$rows" -f config/demo-seed.sql 2>&1 | grep -v NOTICE || true
export DATABASE_URL="host=$PGHOST port=$PGPORT user=$PGUSER password=$PGPASSWORD dbname=$PGDATABASE"
listen="${PGSPOUT_LISTEN:-127.0.0.1:8080}"
export PGSPOUT_LISTEN="$listen"
base="http://$listen/v1/datasets/orders/rows"
cat <<EOT

pgspout is starting on http://$listen — open http://$listen/ in a browser for the live page, or try, from
another terminal:

  curl -s $base > orders.ndjson
  curl -s --compressed '$base?format=csv' -o orders.csv
  curl -s -H 'Accept: text/csv' $base | head
  curl -s $base | jq -c 'select(.amount > 999)' | head
  curl -s http://$listen/v1/datasets/nope/rows          # problem+json 404
  curl -s http://$listen/readyz

  # a background export to a file, then its status and the download (resumable with curl -C -)
  curl -s -X POST http://$listen/v1/exports -H 'Content-Type: application/json' \
       -d '{"dataset": "orders", "format": "csv", "compression": "gzip", "query": "amount=gt.500"}'
  curl -s http://$listen/v1/exports/<id>
  curl -s -C - -o orders.csv.gz http://$listen/v1/exports/<id>/download

Ctrl-C stops the server and removes the database.

EOT
exec ./target/release/pgspout serve --config config/pgspout.toml
