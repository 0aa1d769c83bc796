#!/usr/bin/env bash
# Every dependency's licence must be one deny.toml allows: `cargo deny check
# licenses`, installed (pinned) when missing. The check is shown to fail
# first, against an allow list without MIT, which most of the tree uses, so
# a check that cannot fail does not pass unnoticed.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deny --version 2>/dev/null | grep -q '^cargo-deny 0.20.2$'; then
  echo "== installing cargo-deny 0.20.2 (cargo install)"
  cargo install --locked --quiet cargo-deny@0.20.2
fi

strict=$(mktemp)
trap 'rm -f "$strict" "$strict.out"' EXIT
printf '[licenses]\nallow = ["Apache-2.0"]\n' >"$strict"
# It must fail for the licences it rejects, not for any other reason.
if cargo deny --log-level error --config "$strict" check licenses >"$strict.out" 2>&1 ||
  ! grep -q 'rejected' "$strict.out"; then
  echo "check-licenses: an allow list of Apache-2.0 alone was not refused for its licences:" >&2
  cat "$strict.out" >&2
  exit 1
fi

cargo deny --log-level warn check licenses
