#!/usr/bin/env bash
# ONNX round trip against ONNX Runtime (PyPI onnx + onnxruntime + numpy in a cached venv):
# builds ONNX models with the onnx package, imports them through the API, compares predictions
# with ONNX Runtime, exports compressed variants and runs them there (scripts/onnx_roundtrip.py).
#
#   scripts/onnx_roundtrip.sh <path to the modelpress binary> [--quick] [--out summary.json]
#
# The venv lives in ${TMPDIR:-/tmp}/modelpress-onnx and is reused across runs.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN="${1:?usage: scripts/onnx_roundtrip.sh <path to the modelpress binary> [--quick] [--out FILE]}"
shift
[ -x "$BIN" ] || { echo "not an executable: $BIN" >&2; exit 2; }

VENV="${TMPDIR:-/tmp}/modelpress-onnx"
if ! "$VENV/bin/python" -c 'import onnx, onnxruntime, numpy' >/dev/null 2>&1; then
  echo "== installing onnx, onnxruntime, numpy into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check 'onnx>=1.16,<2' 'onnxruntime>=1.20,<2' 'numpy>=1.26,<3'
fi
"$VENV/bin/python" -c 'import onnx, onnxruntime; print("onnx", onnx.__version__, "onnxruntime", onnxruntime.__version__)'

WORK="$(mktemp -d "${TMPDIR:-/tmp}/modelpress-onnx-rt.XXXXXX")"
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

LOG="$WORK/server.log"
env -u MODELPRESS_ADMIN_KEY -u MODELPRESS_BIND RUST_LOG=info,tower_http=warn "$BIN" \
  --bind 127.0.0.1:0 --data-dir "$WORK/data" --rate-limit-rps 0 >"$LOG" 2>&1 &
SERVER_PID=$!
BASE=""
for _ in $(seq 1 200); do
  BASE="$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$LOG" | head -n1 || true)"
  [ -n "$BASE" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$LOG" >&2; echo "server exited" >&2; exit 1; }
  sleep 0.1
done
[ -n "$BASE" ] || { cat "$LOG" >&2; echo "server did not start" >&2; exit 1; }
echo "== server at $BASE"

status=0
"$VENV/bin/python" scripts/onnx_roundtrip.py --url "$BASE" "$@" || status=$?
if grep -q "panicked" "$LOG"; then
  echo "!! the server logged a panic:" >&2
  grep -B2 -A5 "panicked" "$LOG" >&2
  status=1
fi
[ "$status" -eq 0 ] || tail -n 30 "$LOG" >&2
exit "$status"
