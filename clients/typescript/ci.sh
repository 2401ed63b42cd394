#!/usr/bin/env bash
# The typed client's CI steps (.ci/run runs both; each works on a laptop too, from anywhere):
#   ci.sh check  npm ci (network), regenerate schema.d.ts from the committed openapi.json and fail
#                on a diff, then tsc --strict --noEmit over client.ts, schema.d.ts, smoke.ts and
#                client.test.ts (tsconfig.json adds exactOptionalPropertyTypes, erasableSyntaxOnly).
#   ci.sh smoke  start `keyflash dev --no-crons` on a free port and a temporary state dir, wait
#                until it answers, mint its dev tokens, run smoke.ts against it, stop it.
#   ci.sh smoke URL  the same against the `keyflash dev` already at URL (its state dir is
#                $KEYFLASH_STATE_DIR, else .keyflash/, as for `keyflash token`).
# Needs the repository's venv (.venv, made by `python3 run.py`) for the smoke.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
keyflash=$repo/.venv/bin/keyflash
cd "$here"

check() {
  npm ci --no-audit --no-fund
  local fresh
  fresh=$(mktemp -d)
  trap "rm -rf '$fresh'" EXIT
  node_modules/.bin/openapi-typescript openapi.json --output "$fresh/schema.d.ts" >/dev/null
  if ! diff -u schema.d.ts "$fresh/schema.d.ts"; then
    echo "ci.sh: schema.d.ts is not openapi-typescript's output for openapi.json:" \
      "run keyflash openapi --typescript clients/typescript" >&2
    return 1
  fi
  node_modules/.bin/tsc --strict --noEmit -p .
  echo "ci.sh: schema.d.ts in step with openapi.json; client and smoke compile under --strict"
}

# smoke.ts against the stack at $1: an admin's token and, for the team routes, the same user's as
# an admin of org_smoke (the smoke erases the user at the end).
run_smoke() {
  local token org_token
  token=$("$keyflash" token --user typescript-smoke --admin) || return 1
  org_token=$("$keyflash" token --user typescript-smoke --org org_smoke --org-role admin) || return 1
  KEYFLASH_URL=$1 KEYFLASH_TOKEN=$token KEYFLASH_ORG_TOKEN=$org_token \
    KEYFLASH_ORG_ID=org_smoke node .build/smoke.js
}

smoke() {
  local state port pid url deadline
  [ -x "$keyflash" ] || { echo "ci.sh: $keyflash missing: run python3 run.py first" >&2; return 1; }
  [ -d node_modules ] || npm ci --no-audit --no-fund
  node_modules/.bin/tsc -p .
  if [ -n "${1:-}" ]; then
    run_smoke "$1"
    return
  fi
  state=$(mktemp -d)
  port=$("$repo/.venv/bin/python" -c 'from devkit._host import free_port; print(free_port())')
  url=http://127.0.0.1:$port
  export KEYFLASH_STATE_DIR=$state
  "$keyflash" dev --port "$port" --no-crons >"$state/dev.log" 2>&1 &
  pid=$!
  # shellcheck disable=SC2064  # expand now: the trap must stop this stack, not a later one
  trap "kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf '$state'" EXIT
  deadline=$((SECONDS + 300))
  until curl -sf --max-time 10 -o /dev/null "$url/openapi.json"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "ci.sh: keyflash dev exited before it was ready:" >&2
      cat "$state/dev.log" >&2
      return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "ci.sh: keyflash dev not ready after 300 s:" >&2
      cat "$state/dev.log" >&2
      return 1
    fi
    sleep 0.5 # the poll's interval; readiness is the answer above, not this
  done
  if ! run_smoke "$url"; then
    echo "ci.sh: the stack's log:" >&2
    tail -n 50 "$state/dev.log" >&2
    return 1
  fi
}

case "${1:-}" in
  check) check ;;
  smoke) smoke "${2:-}" ;;
  *) echo "usage: $0 check | smoke [URL]" >&2; exit 2 ;;
esac
