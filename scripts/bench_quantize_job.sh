#!/usr/bin/env bash
# End-to-end int8 quantize job timings and memory (issue: quantization performance).
#   1. MLP 4 x 4096x4096 (67.1M params, 268 MB f32, seeded Gaussian / 64 like shared/peers/ort_peer.py)
#      -> quantize job scheme int8: job duration_s (the worker's own clock) and wall time submit->done.
#   2. MLP 16 x 4096x4096 (1.07 GB f32) -> int8: job time and the server's peak RSS (VmHWM), to
#      check memory stays ~ 2 x the largest tensor + overhead, whatever the model size.
# LAYERS="4 16" picks the models.
# Usage: PYTHON=/path/to/python-with-numpy BIN=target/release/modelpress scripts/bench_quantize_job.sh
# Needs numpy (e.g. the peers venv: python3 -m venv /tmp/peers && /tmp/peers/bin/pip install numpy).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/modelpress}
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d)
trap 'kill $PID 2>/dev/null || true; rm -rf "$WORK"' EXIT

gen() { # layers out
  "$PYTHON" - "$1" "$2" <<'PY'
import json, struct, sys
import numpy as np
layers, out = int(sys.argv[1]), sys.argv[2]
rng = np.random.default_rng(0)
names, hdr, off = [], {}, 0
for i in range(layers):
    for n, shape in ((f"fc{i}.weight", [4096, 4096]), (f"fc{i}.bias", [4096])):
        size = int(np.prod(shape)) * 4
        hdr[n] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + size]}
        off += size; names.append((n, shape))
h = json.dumps(hdr).encode(); h += b" " * (-(len(h) + 8) % 8)
with open(out, "wb") as f:
    f.write(struct.pack("<Q", len(h))); f.write(h)
    for n, shape in names:
        a = (rng.standard_normal(shape, dtype=np.float32) / 64).astype("<f4") if n.endswith("weight") else np.zeros(shape, "<f4")
        f.write(a.tobytes())
PY
}

"$BIN" --bind 127.0.0.1:0 --data-dir "$WORK/data" --max-upload-bytes 8589934592 > "$WORK/log" 2>&1 &
PID=$!
for _ in $(seq 100); do grep -q 'listening on' "$WORK/log" && break; sleep 0.1; done
URL=$(grep -o 'http://[0-9.:]*' "$WORK/log" | head -1)
echo "server $URL pid $PID $(nproc) cores; $(grep VmHWM /proc/$PID/status)"

run() { # layers label
  gen "$1" "$WORK/m.safetensors"
  ls -l "$WORK/m.safetensors" | awk '{print "model file:", $5, "bytes"}'
  MODEL=$(curl -sf -T "$WORK/m.safetensors" -X POST -H "Content-Type: application/octet-stream" \
    "$URL/v1/models?name=$2" | "$PYTHON" -c "import json,sys;print(json.load(sys.stdin)['id'])")
  rm -f "$WORK/m.safetensors"
  sync; echo 1 > /proc/sys/vm/drop_caches 2>/dev/null || true
  T0=$(date +%s.%N)
  JOB=$(curl -sf -X POST "$URL/v1/jobs" -H 'Content-Type: application/json' \
    -d "{\"kind\":\"quantize\",\"model_id\":\"$MODEL\",\"params\":{\"scheme\":\"int8\"}}" | "$PYTHON" -c "import json,sys;print(json.load(sys.stdin)['id'])")
  while :; do
    S=$(curl -s "$URL/v1/jobs/$JOB" | "$PYTHON" -c "import json,sys;j=json.load(sys.stdin);r=j.get('report') or {};print(j['status'], r.get('duration_s'), r.get('bytes_before'), r.get('bytes_after'))")
    case "$S" in succeeded*|failed*|cancelled*) break;; esac; sleep 0.05
  done
  T1=$(date +%s.%N)
  echo "$2 int8 job: status duration_s bytes_before bytes_after = $S; wall submit->done $(echo "$T1 - $T0" | bc) s"
  echo "server peak RSS so far: $(grep VmHWM /proc/$PID/status)"
}
for L in ${LAYERS:-4 16}; do run "$L" "mlp${L}x4096"; done
