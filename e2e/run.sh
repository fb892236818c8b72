#!/usr/bin/env bash
# Browser end-to-end tests of the web dashboard against a real modelpress server.
#
#   bash e2e/run.sh path/to/modelpress
#
# Installs Debian's chromium if it is missing (skips LOUDLY, exit 0, only when that is impossible),
# installs playwright-core with npm, starts the server on a free port with a temporary data dir,
# runs e2e/dashboard.spec.mjs with node's test runner, stops the server. Screenshots and the
# downloaded artifact land in e2e/artifacts/ (git-ignored).
set -euo pipefail

BIN=${1:?usage: bash e2e/run.sh path/to/modelpress}
BIN=$(realpath "$BIN")
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CHROMIUM=/usr/bin/chromium

loud_skip() {
  echo "##############################################################################" >&2
  echo "## e2e: SKIPPED: $1" >&2
  echo "## The dashboard browser tests did NOT run." >&2
  echo "##############################################################################" >&2
  exit 0
}

apt_install() {
  if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null; then return 1; fi
  local SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

if [ ! -x "$CHROMIUM" ]; then
  echo "e2e: $CHROMIUM missing; installing Debian's chromium"
  apt_install chromium || true
  [ -x "$CHROMIUM" ] || loud_skip "could not install chromium (apt-get install -y chromium failed)"
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "e2e: node/npm missing; installing Debian's nodejs and npm"
  apt_install nodejs npm || true
  command -v node >/dev/null && command -v npm >/dev/null || loud_skip "could not install nodejs/npm"
fi

(cd "$HERE" && npm install --no-audit --no-fund --loglevel=error)

WORK=$(mktemp -d)
LOG="$WORK/server.log"
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

"$BIN" serve --bind 127.0.0.1:0 --data-dir "$WORK/data" >"$LOG" 2>&1 &
SERVER_PID=$!

URL=""
for _ in $(seq 1 300); do
  # The log may be coloured: strip ANSI escapes before matching.
  URL=$(sed 's/\x1b\[[0-9;]*m//g' "$LOG" | grep -o 'modelpress listening on http://127\.0\.0\.1:[0-9]*' | head -n1 | sed 's/.*listening on //' || true)
  [ -n "$URL" ] && break
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "e2e: the server exited before listening:" >&2
    cat "$LOG" >&2
    exit 1
  fi
  sleep 0.1
done
if [ -z "$URL" ]; then
  echo "e2e: the server did not report its address within 30 s:" >&2
  cat "$LOG" >&2
  exit 1
fi
echo "e2e: server at $URL"

mkdir -p "$HERE/artifacts"
STATUS=0
(cd "$HERE" && MODELPRESS_URL="$URL" timeout 600 node --test --test-concurrency=1 --test-reporter=spec dashboard.spec.mjs) || STATUS=$?
if [ "$STATUS" -ne 0 ]; then
  echo "e2e: FAILED (exit $STATUS); server log tail:" >&2
  tail -n 40 "$LOG" >&2
fi
exit "$STATUS"
