#!/usr/bin/env bash
# Installs what pgspout's demo, tests and benchmarks need on Debian: PostgreSQL (with pg_virtualenv), curl,
# jq, Prometheus (with promtool) for the metrics tests, Python for the DuckDB, pandas and polars tests,
# Node.js, npm and Chromium for the JavaScript client's and the browser tests, and make and a C compiler for
# jemalloc's build. Run by the other scripts; safe to run again. `setup.sh build` installs only what the
# build needs (make and a C compiler), so the test script can build while the rest installs.
set -euo pipefail

need=()
command -v make >/dev/null 2>&1 || need+=(make)
command -v cc >/dev/null 2>&1 || need+=(gcc)
if [ "${1:-}" != build ]; then
  command -v pg_virtualenv >/dev/null 2>&1 || need+=(postgresql-common)
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
  command -v psql >/dev/null 2>&1 || need+=(postgresql-client)
  command -v curl >/dev/null 2>&1 || need+=(curl)
  command -v jq >/dev/null 2>&1 || need+=(jq)
  command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || need+=(prometheus)
  command -v python3 >/dev/null 2>&1 || need+=(python3)
  command -v node >/dev/null 2>&1 || need+=(nodejs)
  command -v npm >/dev/null 2>&1 || need+=(npm)
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
fi
if ((${#need[@]})); then
  echo "setup: installing ${need[*]}" >&2
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
