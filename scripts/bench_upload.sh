#!/usr/bin/env bash
# End-to-end measurement for the foundation: upload throughput and peak RSS for a large
# safetensors file, then the f16 cast job time on it.
# Usage: scripts/bench_upload.sh [SIZE_MB]   (needs a release build: cargo build --release)
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${1:-512}
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/modelpress}
WORK=$(mktemp -d)
trap 'kill $PID 2>/dev/null || true; rm -rf "$WORK"' EXIT

# A SIZE_MB f32 tensor made of a repeated 4 MiB block of finite values.
python3 - "$WORK" "$SIZE_MB" <<'PY'
import json, struct, sys, math, os
work, mb = sys.argv[1], int(sys.argv[2])
block = struct.pack("<%df" % (1 << 20), *[math.sin(i * 0.001) for i in range(1 << 20)])
n = mb // 4 * (1 << 20)
hdr = json.dumps({"w": {"dtype": "F32", "shape": [n // 4096, 4096], "data_offsets": [0, n * 4]}}).encode()
hdr += b" " * (-(len(hdr) + 8) % 8)
with open(os.path.join(work, "big.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(hdr))); f.write(hdr)
    for _ in range(mb // 4):
        f.write(block)
PY
ls -l "$WORK/big.safetensors"

"$BIN" --bind 127.0.0.1:0 --data-dir "$WORK/data" --max-upload-bytes 8589934592 > "$WORK/log" 2>&1 &
PID=$!
for _ in $(seq 100); do grep -q 'listening on' "$WORK/log" && break; sleep 0.1; done
URL=$(grep -o 'http://[0-9.:]*' "$WORK/log" | head -1)
echo "server $URL pid $PID; RSS before: $(grep VmRSS /proc/$PID/status)"
curl -s -o "$WORK/model.json" -w 'upload: %{time_total} s, %{speed_upload} B/s\n' \
  --data-binary @"$WORK/big.safetensors" -H 'Content-Type: application/octet-stream' "$URL/v1/models?name=big"
echo "peak RSS after upload: $(grep VmHWM /proc/$PID/status)"
MODEL=$(python3 -c "import json;print(json.load(open('$WORK/model.json'))['id'])")
JOB=$(curl -s -X POST "$URL/v1/jobs" -H 'Content-Type: application/json' \
  -d "{\"kind\":\"quantize\",\"model_id\":\"$MODEL\",\"params\":{\"scheme\":\"f16\"}}" | python3 -c "import json,sys;print(json.load(sys.stdin)['id'])")
while :; do
  S=$(curl -s "$URL/v1/jobs/$JOB" | python3 -c "import json,sys;j=json.load(sys.stdin);print(j['status'], j.get('report') and j['report'].get('duration_s'))")
  case "$S" in succeeded*|failed*|cancelled*) break;; esac; sleep 0.2
done
echo "f16 job: $S (status, duration_s)"
echo "peak RSS after job: $(grep VmHWM /proc/$PID/status)"
