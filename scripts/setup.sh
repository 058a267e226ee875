#!/usr/bin/env bash
# Installs what pgspout's demo, tests and benchmarks need on Debian: PostgreSQL (with pg_virtualenv), curl.
# Sourced by the other scripts; safe to run again.
set -euo pipefail

need=()
command -v pg_virtualenv >/dev/null 2>&1 || need+=(postgresql postgresql-common)
[ -x "$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | tail -n1)" ] || need+=(postgresql)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v psql >/dev/null 2>&1 || need+=(postgresql-client)
if ((${#need[@]})); then
  echo "setup: installing ${need[*]}" >&2
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
