#!/usr/bin/env bash
# The bench command: builds release binaries, starts a throwaway store and an
# authgate on it, drives it with authgate-bench and cleans up.
#
#   scripts/bench.sh [postgres|sqlite] [authgate-bench flags...]
#
# Postgres runs with its default durability settings (fsync and synchronous
# commit on), as in production. Figures are printed as ratios against the
# health check measured in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."

backend=${1:-postgres}
shift || true
case "$backend" in postgres|sqlite) ;; *) echo "usage: $0 [postgres|sqlite] [bench flags]" >&2; exit 2 ;; esac

cargo build --release --quiet --features bench --bin authgate --bin authgate-bench

work=$(mktemp -d)
pids=()
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
pg_bin() {
  command -v "$1" 2>/dev/null && return
  ls /usr/lib/postgresql/*/bin/"$1" 2>/dev/null | sort -V | tail -n 1
}
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  if [ -d "$work/pg" ]; then as_pg "$(pg_bin pg_ctl)" -D "$work/pg" -m fast stop >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

if [ "$backend" = postgres ]; then
  [ "$(id -u)" = 0 ] && chown postgres "$work"
  pg_port=$(free_port)
  as_pg "$(pg_bin initdb)" -D "$work/pg" -U postgres -A trust >/dev/null
  as_pg "$(pg_bin pg_ctl)" -D "$work/pg" -w -l "$work/pg.log" \
    -o "-k $work -p $pg_port -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null
  url="postgres://postgres@127.0.0.1:$pg_port/postgres"
else
  url="sqlite://$work/bench.db"
fi

port=$(free_port)
AUTHGATE_DATABASE__URL="$url" AUTHGATE_SERVER__LISTEN="127.0.0.1:$port" \
  AUTHGATE_DATABASE__MAX_CONNECTIONS="${BENCH_POOL:-32}" AUTHGATE_LOG__LEVEL=warn \
  target/release/authgate serve &
pids+=($!)
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done

echo "store: $backend"
target/release/authgate-bench --addr "http://127.0.0.1:$port" "$@"
