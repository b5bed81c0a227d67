#!/usr/bin/env bash
# Train the default model on one GPU machine in one call (device tool), from packs under .carry/.
#
#   DATA=/root/rtdata bash scripts/gpu_train_default.sh STEPS   # pretraining steps (default: the recipe's)
#
# Before: build the corpora and pack them here (reports/default_model.md, "Reproducing"), one
# pack per corpus so each fits one call's 64 MiB beside the tree:
#   for c in real synth_train synth_test; do
#     python -m training.corpora.pack --corpus data/$c --out .carry/p_$c --kbps 14 --max-seconds 240; done
# then copy them to the GPU machine's disk in back-to-back calls (it keeps files while it stays
# warm): carry .carry/p_real, run `mkdir -p /root/rtdata && cp -r .carry/p_real/real /root/rtdata/`;
# the same for synth_train; the last call carries .whl (the GPU image lacks pydantic, soundfile, …)
# and .carry/p_synth_test, copies it too and runs this script.
# What comes back in $OUT (8 files at most): summary.json, the bundle's manifest.json and
# weights.safetensors, the three plots and train.log.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/gpu-train}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
PY="${PYTHON:-python3}"
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export RT_TAGGER_COMMIT="${RT_TAGGER_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
C="${DATA:-.carry/corpus}"
RUN=/tmp/rt-train-default
rm -rf "$RUN" /tmp/rt-train-bundle
steps=()
[ -n "${1:-}" ] && steps=(--steps "$1")
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  $PY -m training all --no-progress "${steps[@]}" \
    --set "data.pretrain=[\"$C/real\", \"$C/synth_train\"]" --set "data.labelled=\"$C/synth_train\"" \
    --set "data.test=\"$C/synth_test\"" --set "data.real=\"$C/real\"" \
    --out "$RUN" --export /tmp/rt-train-bundle
  echo "exit status $?"
} 2>&1 | tee "$OUT/train.log"
cp "$RUN/summary.json" "$RUN"/*.png "$OUT"/ 2>/dev/null
cp /tmp/rt-train-bundle/manifest.json /tmp/rt-train-bundle/weights.safetensors "$OUT"/ 2>/dev/null
ls -la "$OUT"
