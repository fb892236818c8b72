#!/usr/bin/env bash
# A CI step: upload the freshly trained model, compress it, gate on the report, download the
# artifact. Works from any CI system that runs a shell; needs only the `modelpress` binary.
#
#   MODELPRESS_URL=https://modelpress.internal MODELPRESS_API_KEY=mp_… \
#     examples/pipeline.sh model.safetensors model.spec.json eval.safetensors
#
# Exit codes (from `modelpress`): 0 published, 1 error (server unreachable, request refused),
# 3 the compression job failed or was cancelled, 4 the report missed a threshold.
set -euo pipefail

MODEL_FILE=${1:?usage: pipeline.sh MODEL.safetensors SPEC.json EVAL_DATASET.safetensors}
SPEC_FILE=${2:?architecture spec (JSON)}
EVAL_FILE=${3:?labelled evaluation dataset}
OUT=${OUT:-model-int8.gguf}                      # the artifact to publish
MAX_SIZE_RATIO=${MAX_SIZE_RATIO:-0.3}            # compressed file ≤ 30 % of the original
MAX_ACCURACY_DROP=${MAX_ACCURACY_DROP:-0.005}    # at most half a point of accuracy lost
MODELPRESS=${MODELPRESS:-modelpress}

# 1. Upload (stdout is the new id; progress and summaries go to stderr).
model=$("$MODELPRESS" upload "$MODEL_FILE" --spec "$SPEC_FILE" --name "${CI_COMMIT_SHA:-local}-model")
data=$("$MODELPRESS" upload --dataset "$EVAL_FILE" --name "${CI_COMMIT_SHA:-local}-eval")

# 2. Compress and gate. `--require` implies `--wait`: a progress bar on a terminal, plain lines
#    in CI logs; the exit code is 4 when a condition fails. The idempotency key makes a retried
#    CI step reuse the job instead of queueing another. (With a server that has auto-compression,
#    `modelpress compress "$model" --params '{…budget…}'` takes the place of `quantize`.)
compressed=$("$MODELPRESS" quantize "$model" --scheme int8 --eval-dataset "$data" \
  --idempotency-key "${CI_COMMIT_SHA:-local}-$(basename "$MODEL_FILE")-int8" \
  --require "size_ratio<=$MAX_SIZE_RATIO" \
  --require "accuracy_drop<=$MAX_ACCURACY_DROP")

# 3. Download the artifact the gate approved (written to a temp name, then renamed).
"$MODELPRESS" download "$compressed" --format gguf -o "$OUT"
echo "published $OUT (model $compressed)" >&2
