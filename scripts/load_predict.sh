#!/usr/bin/env bash
# Load test of POST /v1/models/{id}/predict on loopback with wrk (apt-get install wrk).
#
# Starts a release build of modelpress on a temp data dir, uploads the digits teacher with its
# spec, then runs wrk twice with batch-1 JSON requests (a real digits test sample):
#   1. one connection (one client at a time): latency p50/p99 and requests/s;
#   2. CONNECTIONS concurrent connections (default 64): requests/s and p50/p99 latency.
# Prints the throughput ratio and the mean rows per forward pass (from /metrics), then stops the
# server. Bounded: DURATION per run (default 10s), loopback only, everything removed afterwards.
#
# Usage: scripts/load_predict.sh [path/to/modelpress]   (default: target/release/modelpress)
# Env:   DURATION=10s CONNECTIONS=64 PORT=18090 WRK_THREADS=1 plus any MODELPRESS_* setting
#        (e.g. MODELPRESS_MAX_WAIT_US=0 to switch the batching wait off).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-${CARGO_TARGET_DIR:-$ROOT/target}/release/modelpress}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
PORT=${PORT:-18090}
WRK_THREADS=${WRK_THREADS:-1}
BASE="http://127.0.0.1:$PORT"

command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 1; }
[ -x "$BIN" ] || { echo "no modelpress binary at $BIN (cargo build --release)" >&2; exit 1; }

WORK=$(mktemp -d)
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

"$BIN" --bind "127.0.0.1:$PORT" --data-dir "$WORK/data" --log-format json >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 100); do
  curl -sf "$BASE/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -sf "$BASE/readyz" >/dev/null || { echo "server did not start:" >&2; cat "$WORK/server.log" >&2; exit 1; }

MODEL=$(curl -sf -F "weights=@$ROOT/tests/fixtures/teacher_digits.safetensors" -F name=teacher \
  -F "spec=@$ROOT/examples/digits-mlp.spec.json" "$BASE/v1/models" | sed -E 's/.*"id":"([^"]+)".*/\1/')
URL="$BASE/v1/models/$MODEL/predict"

# The first digits test sample (a 7), as the JSON body.
python3 - "$ROOT/tests/fixtures/digits.safetensors" >"$WORK/body.json" <<'EOF'
import json, struct, sys
b = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])
start = 8 + n + h["test_x"]["data_offsets"][0]
row = struct.unpack("<64f", b[start:start + 256])
print(json.dumps({"inputs": [list(row)]}))
EOF
cat >"$WORK/post.lua" <<EOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("$WORK/body.json", "r")
wrk.body = f:read("*a")
f:close()
function response(status, headers, body)
  if status ~= 200 then io.stderr:write("status " .. status .. "\n") end
end
EOF

echo "answer: $(curl -sf "$URL" -H 'Content-Type: application/json' -d @"$WORK/body.json")"
# Warm-up (connection set-up, allocator, caches).
wrk -t1 -c1 -d2s -s "$WORK/post.lua" "$URL" >/dev/null

metric() { curl -sf "$BASE/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }

run() { # connections → prints wrk's report, leaves requests/s in RPS
  local before_sum before_count
  before_sum=$(metric modelpress_inference_batch_size_sum)
  before_count=$(metric modelpress_inference_batch_size_count)
  wrk -t"$WRK_THREADS" -c"$1" -d"$DURATION" --latency -s "$WORK/post.lua" "$URL" | tee "$WORK/wrk.txt"
  RPS=$(awk '/^Requests\/sec/ { print $2 }' "$WORK/wrk.txt")
  local sum count
  sum=$(metric modelpress_inference_batch_size_sum)
  count=$(metric modelpress_inference_batch_size_count)
  awk -v s="$sum" -v bs="$before_sum" -v c="$count" -v bc="$before_count" \
    'BEGIN { if (c > bc) printf "rows per forward pass: %.2f (%d passes)\n", (s - bs) / (c - bc), c - bc }'
}

echo "== 1 connection, $DURATION"
run 1
ONE=$RPS
echo "== $CONNECTIONS connections, $DURATION"
run "$CONNECTIONS"
MANY=$RPS
awk -v a="$ONE" -v b="$MANY" -v c="$CONNECTIONS" \
  'BEGIN { printf "throughput: 1 client %.0f req/s, %d clients %.0f req/s, ratio %.2fx\n", a, c, b, b / a }'
