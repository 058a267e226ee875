#!/usr/bin/env bash
# Paired comparison of this checkout's pgspout with the one built from git revision REV, on one throwaway
# cluster: both servers run side by side and every request goes to each in turn (alternating who goes first),
# so the machine's noise hits both alike. Prints median times as ratios to psql \copy, and both peak RSS.
#   scripts/compare.sh REV            (COMPARE_ROWS, default 1000000; COMPARE_ROUNDS, default 11)
# COMPARE_SSLMODE / COMPARE_BASE_SSLMODE set each server's sslmode (verify-* with the cluster's snakeoil
# certificate), e.g. the cost of TLS in one build:
#   COMPARE_SSLMODE=verify-full COMPARE_BASE_SSLMODE=disable scripts/compare.sh HEAD
# COMPARE_AUTH=1 runs this checkout's server with [auth] (HS256) and sends it a token for a role with SELECT
# on the table, to measure what auth costs per request: COMPARE_AUTH=1 scripts/compare.sh HEAD.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
rev=${1:?usage: scripts/compare.sh REV}

if [ -z "${PGHOST:-}" ]; then
  bash scripts/setup.sh
  cargo build --release --locked
  base=target/compare/$(git rev-parse --short "$rev")
  if [ ! -x "$base/target/release/pgspout" ]; then
    rm -rf "$base"
    mkdir -p target/compare
    git worktree add --detach "$base" "$rev" >/dev/null
    (cd "$base" && cargo build --release --locked)
  fi
  exec pg_virtualenv -t -- env COMPARE_BASE="$PWD/$base" bash "$0" "$rev"
fi

psql -X -q -v rows="${COMPARE_ROWS:-1000000}" -f config/demo-seed.sql >/dev/null
export DATABASE_URL="host=$PGHOST port=$PGPORT user=$PGUSER password=$PGPASSWORD dbname=$PGDATABASE"
export RUST_LOG=warn
port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
tls() { # sslmode
  case $1 in
    "") ;;
    verify-*) echo " sslmode=$1 sslrootcert=/etc/ssl/certs/ssl-cert-snakeoil.pem" ;;
    *) echo " sslmode=$1" ;;
  esac
}
new_port=$(port)
base_port=$(port)
new_auth=()
auth_env=()
if [ -n "${COMPARE_AUTH:-}" ]; then
  secret=compare-secret-of-at-least-32-characters
  psql -X -q -c "DO \$\$ BEGIN CREATE ROLE compare_reader NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END \$\$" \
    -c "GRANT SELECT ON orders TO compare_reader" >/dev/null
  token=$(python3 -c '
import base64, hashlib, hmac, json, sys, time
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
body = b64(json.dumps({"role": "compare_reader", "sub": "compare", "exp": int(time.time()) + 86400}).encode())
sig = hmac.new(sys.argv[1].encode(), (head + "." + body).encode(), hashlib.sha256).digest()
print(head + "." + body + "." + b64(sig))
' "$secret")
  new_auth=(-H "Authorization: Bearer $token")
  auth_env=(PGSPOUT_AUTH__JWT_SECRET="$secret")
fi
env "${auth_env[@]}" DATABASE_URL="$DATABASE_URL$(tls "${COMPARE_SSLMODE:-}")" PGSPOUT_LISTEN=127.0.0.1:$new_port \
  target/release/pgspout serve --config config/pgspout.toml &
new_pid=$!
# Each revision with its own config file: keys come and go.
DATABASE_URL="$DATABASE_URL$(tls "${COMPARE_BASE_SSLMODE:-}")" PGSPOUT_LISTEN=127.0.0.1:$base_port \
  "$COMPARE_BASE/target/release/pgspout" serve --config "$COMPARE_BASE/config/pgspout.toml" &
base_pid=$!
trap 'kill $new_pid $base_pid 2>/dev/null || true' EXIT
for p in "$new_port" "$base_port"; do
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$p/readyz" && continue 2; sleep 0.1; done
  echo "compare: the server on port $p did not become ready" >&2
  exit 1
done

millis() {
  local start
  start=$(date +%s%N)
  "$@" >/dev/null
  echo $((($(date +%s%N) - start) / 1000000))
}
export_once() { # port case
  local query="" headers=() resource=rows
  [ "$1" = "$new_port" ] && headers=("${new_auth[@]}")
  case $2 in
    chunked) query="consistency=chunked" ;;
    csv) query="format=csv" ;;
    gzip | zstd) headers+=(-H "Accept-Encoding: $2") ;;
    page) resource=page query="limit=100" ;;
  esac
  millis curl -sS --fail -o /dev/null "${headers[@]}" "http://127.0.0.1:$1/v1/datasets/orders/$resource?$query"
}
median() { tr ' ' '\n' | grep . | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

cases=(ndjson chunked csv gzip zstd page)
declare -A times
copy="\\copy (SELECT id, customer_name, email, amount, category, created_at, note FROM orders ORDER BY id) TO /dev/null CSV"
# Round 0 warms the caches and is not counted.
for round in $(seq 0 "${COMPARE_ROUNDS:-11}"); do
  psql_time=$(millis psql -X -q -c "$copy")
  for c in "${cases[@]}"; do
    if ((round % 2)); then
      a=$(export_once "$new_port" "$c"); b=$(export_once "$base_port" "$c")
    else
      b=$(export_once "$base_port" "$c"); a=$(export_once "$new_port" "$c")
    fi
    ((round)) || continue
    times[new_$c]+=" $a"
    times[base_$c]+=" $b"
  done
  ((round)) && times[psql]+=" $psql_time"
done

psql_median=$(echo "${times[psql]}" | median)
echo "compare: this checkout vs $1, ${COMPARE_ROWS:-1000000} rows, medians of ${COMPARE_ROUNDS:-11} paired rounds; psql \\copy ${psql_median} ms"
for c in "${cases[@]}"; do
  a=$(echo "${times[new_$c]}" | median)
  b=$(echo "${times[base_$c]}" | median)
  if [ "$c" = page ]; then # one 100-row page: its latency (curl's start-up included), not a ratio
    echo "  page     this $a ms   $1 $b ms"
    continue
  fi
  awk -v c="$c" -v a="$a" -v b="$b" -v p="$psql_median" \
    'BEGIN { printf "  %-8s this %.2fx psql   %s %.2fx psql\n", c, a / p, "'"$1"'", b / p }'
done
rss() { awk '/VmHWM/ { printf "%.1f MiB", $2 / 1024 }' "/proc/$1/status"; }
echo "  peak RSS: this $(rss $new_pid), $1 $(rss $base_pid)"
