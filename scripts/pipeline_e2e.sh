#!/usr/bin/env bash
# End-to-end check of the README's "In a pipeline" example (examples/pipeline.sh) against a real
# server started from the given binary: a passing gate publishes the GGUF, a failing gate exits 4
# and publishes nothing, a webhook receiver gets a signed event. Quick (a few seconds).
#   usage: scripts/pipeline_e2e.sh path/to/modelpress
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${1:?usage: pipeline_e2e.sh path/to/modelpress}")
WORK=$(mktemp -d "${TMPDIR:-/tmp}/modelpress-pipeline.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# A webhook receiver that records what it gets (python stdlib only).
HOOK_PORT=$(free_port)
python3 - "$HOOK_PORT" "$WORK/hook" <<'EOF' &
import http.server, sys
port, out = int(sys.argv[1]), sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with open(out + ".body", "wb") as f: f.write(body)
        with open(out + ".sig", "w") as f: f.write(self.headers["Modelpress-Signature"])
        self.send_response(204); self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
EOF
PIDS+=($!)

PORT=$(free_port)
"$BIN" serve --bind "127.0.0.1:$PORT" --data-dir "$WORK/data" --webhook-allow 127.0.0.1 \
  >"$WORK/server.log" 2>&1 &
PIDS+=($!)
export MODELPRESS_URL="http://127.0.0.1:$PORT"
for _ in $(seq 100); do
  curl -sf "$MODELPRESS_URL/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -sf "$MODELPRESS_URL/healthz" >/dev/null || { cat "$WORK/server.log"; exit 1; }

# A default webhook for every job; its secret is shown once.
SECRET=$(curl -sf -X POST "$MODELPRESS_URL/v1/webhooks" -H 'Content-Type: application/json' \
  -d "{\"url\":\"http://127.0.0.1:$HOOK_PORT/modelpress\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])')

export MODELPRESS="$BIN" CI_COMMIT_SHA=e2e
OUT="$WORK/model-int8.gguf" bash examples/pipeline.sh \
  tests/fixtures/teacher_digits.safetensors examples/digits-mlp.spec.json tests/fixtures/digits.safetensors
head -c 4 "$WORK/model-int8.gguf" | grep -q GGUF || { echo "!! no GGUF artifact"; exit 1; }
echo "ok: passing gate published the artifact"

set +e
OUT="$WORK/too-big.gguf" MAX_SIZE_RATIO=0.01 CI_COMMIT_SHA=e2e-strict bash examples/pipeline.sh \
  tests/fixtures/teacher_digits.safetensors examples/digits-mlp.spec.json tests/fixtures/digits.safetensors
rc=$?
set -e
[ "$rc" = 4 ] || { echo "!! failing gate exited $rc, expected 4"; exit 1; }
[ ! -e "$WORK/too-big.gguf" ] || { echo "!! a failing gate published an artifact"; exit 1; }
echo "ok: failing gate exited 4 and published nothing"

# The webhook event of the last job, verified the way a receiver would (HMAC-SHA256 of "t.body").
for _ in $(seq 100); do [ -s "$WORK/hook.sig" ] && break; sleep 0.1; done
python3 - "$SECRET" "$WORK/hook" <<'EOF'
import hmac, hashlib, json, sys
secret, base = sys.argv[1], sys.argv[2]
body = open(base + ".body", "rb").read()
parts = dict(p.split("=", 1) for p in open(base + ".sig").read().split(","))
want = hmac.new(secret.encode(), parts["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
assert hmac.compare_digest(want, parts["v1"]), "signature does not verify"
ev = json.loads(body)
assert ev["type"] == "job.succeeded" and ev["job"]["kind"] == "quantize", ev
assert "size_ratio" in ev["job"]["headline"], ev
print("ok: webhook event verified:", ev["type"], ev["job"]["headline"])
EOF
