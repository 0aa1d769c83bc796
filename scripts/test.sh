#!/usr/bin/env bash
# The test command: installs what the integration tests need when it is
# missing (Postgres server binaries, oathtool, Prometheus, the Python gRPC
# packages), then runs every test. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

have_pg() {
  { command -v initdb && command -v pg_ctl; } >/dev/null 2>&1 && return 0
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

if ! have_pg; then
  echo "== installing Postgres server binaries (apt)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
# oathtool: an independent TOTP generator; prometheus: a real scraper and
# promtool.
missing=()
command -v oathtool >/dev/null || missing+=(oathtool)
{ command -v prometheus && command -v promtool; } >/dev/null || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]} (apt)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The harness runs Postgres as this user when the tests run as root.
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
  useradd --system --no-create-home postgres
fi
if ! python3 -c 'import grpc, grpc_tools, grpc_reflection' 2>/dev/null; then
  echo "== installing the Python client's packages (pip)"
  python3 -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
fi

cargo test --locked "$@"
