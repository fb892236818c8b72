#!/usr/bin/env bash
# Contract check with a generated client: generates a Python client from openapi.yaml with
# openapi-python-client (PyPI), starts the built server on a free port with a fresh data dir,
# and runs upload → quantize → download through the generated code only
# (scripts/generated_client.py). Fails if the generator drops an operation or model the round
# trip needs, or if any call does not answer as the contract says.
#
#   scripts/generated_client.sh <path to the modelpress binary>
#
# The venv lives in ${TMPDIR:-/tmp}/modelpress-openapi-client and is reused across runs.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN="${1:?usage: scripts/generated_client.sh <path to the modelpress binary>}"
[ -x "$BIN" ] || { echo "not an executable: $BIN" >&2; exit 2; }
BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"

VENV="${TMPDIR:-/tmp}/modelpress-openapi-client"
if ! "$VENV/bin/openapi-python-client" --version >/dev/null 2>&1; then
  echo "== installing openapi-python-client into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check 'openapi-python-client>=0.28,<0.29'
fi
"$VENV/bin/openapi-python-client" --version

WORK="$(mktemp -d "${TMPDIR:-/tmp}/modelpress-client.XXXXXX")"
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "== generating the client from openapi.yaml"
"$VENV/bin/openapi-python-client" generate --path openapi.yaml --output-path "$WORK/modelpress_client" \
  --meta none >"$WORK/generate.log" 2>&1 || { cat "$WORK/generate.log" >&2; exit 1; }
# Only the YAML copy of the contract (no schema for application/yaml) may be skipped.
if grep -E "^(WARNING|Unable to)" "$WORK/generate.log" | grep -v "GET /openapi.yaml" | grep -q .; then
  echo "!! the generator skipped parts of the contract:" >&2
  cat "$WORK/generate.log" >&2
  exit 1
fi

mkdir -p "$WORK/data"
env -u MODELPRESS_ADMIN_KEY -u MODELPRESS_BIND RUST_LOG=info,tower_http=warn "$BIN" \
  --bind 127.0.0.1:0 --data-dir "$WORK/data" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
BASE=""
for _ in $(seq 1 200); do
  BASE="$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$WORK/server.log" | head -n1 || true)"
  [ -n "$BASE" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log" >&2; echo "server exited" >&2; exit 1; }
  sleep 0.1
done
[ -n "$BASE" ] || { cat "$WORK/server.log" >&2; echo "server did not start" >&2; exit 1; }
echo "== server at $BASE"

PYTHONPATH="$WORK" "$VENV/bin/python" scripts/generated_client.py "$BASE" tests/fixtures/teacher_digits.safetensors
echo "== generated client: upload → quantize → download OK"
