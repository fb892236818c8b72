#!/usr/bin/env bash
# Import time and server memory for a 67M-parameter MLP ONNX file (4 Gemm layers of 4096x4096,
# raw float initializers, ~268 MB), uploaded with ?format=onnx to a fresh server.
# Prints the request time (upload + import + store) and the server's peak RSS (VmHWM) before and
# after the upload.
#
#   scripts/bench_onnx_import.sh <path to the modelpress binary>
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:?usage: scripts/bench_onnx_import.sh <path to the modelpress binary>}"
VENV="${TMPDIR:-/tmp}/modelpress-onnx"
if ! "$VENV/bin/python" -c 'import onnx, numpy' >/dev/null 2>&1; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check 'onnx>=1.16,<2' 'onnxruntime>=1.20,<2' 'numpy>=1.26,<3'
fi
WORK="$(mktemp -d "${TMPDIR:-/tmp}/modelpress-onnx-bench.XXXXXX")"
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
"$VENV/bin/python" - "$WORK/mlp67m.onnx" <<'PY'
import sys, numpy as np, onnx
from onnx import helper, numpy_helper, TensorProto
rng = np.random.default_rng(0)
n, inits, nodes, x = 4096, [], [], "input"
for i in range(4):
    inits += [numpy_helper.from_array(rng.standard_normal((n, n), dtype=np.float32) * 0.01, f"fc{i}.weight"),
              numpy_helper.from_array(np.zeros(n, np.float32), f"fc{i}.bias")]
    nodes.append(helper.make_node("Gemm", [x, f"fc{i}.weight", f"fc{i}.bias"], [f"h{i}"], transB=1, name=f"fc{i}"))
    x = f"h{i}"
    if i < 3:
        nodes.append(helper.make_node("Relu", [x], [f"r{i}"], name=f"relu{i}")); x = f"r{i}"
g = helper.make_graph(nodes, "mlp67m", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", n])],
                      [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", n])], inits)
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]); m.ir_version = 8
onnx.save_model(m, sys.argv[1])
print("params", sum(int(np.prod(t.dims)) for t in inits))
PY
SIZE=$(stat -c %s "$WORK/mlp67m.onnx")
LOG="$WORK/server.log"
RUST_LOG=info,tower_http=warn "$BIN" --bind 127.0.0.1:0 --data-dir "$WORK/data" --rate-limit-rps 0 \
  --max-upload-bytes 1000000000 >"$LOG" 2>&1 &
SERVER_PID=$!
BASE=""
for _ in $(seq 1 200); do
  BASE="$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$LOG" | head -n1 || true)"; [ -n "$BASE" ] && break; sleep 0.1
done
[ -n "$BASE" ] || { cat "$LOG" >&2; exit 1; }
cat "$WORK/mlp67m.onnx" >/dev/null  # page cache, like the numbers in shared/ONNX.md
BEFORE=$(awk '/VmHWM/ {print $2}' /proc/$SERVER_PID/status)
T=$(curl -s -o "$WORK/resp.json" -w '%{http_code} %{time_total}' --data-binary @"$WORK/mlp67m.onnx" \
  -H 'Content-Type: application/octet-stream' "$BASE/v1/models?format=onnx&name=mlp67m")
AFTER=$(awk '/VmHWM/ {print $2}' /proc/$SERVER_PID/status)
echo "file: $SIZE bytes"
echo "status, seconds (upload + import + store): $T"
echo "server peak RSS: before ${BEFORE} kB, after ${AFTER} kB; peak / file = $(awk "BEGIN {printf \"%.2f\", $AFTER * 1024 / $SIZE}")"
grep -o '"parameter_count":[0-9]*' "$WORK/resp.json"
grep -o "import_ms[^ ]*" "$LOG" | sed "s/\x1b\[[0-9;]*m//g"
