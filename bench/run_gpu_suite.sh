#!/usr/bin/env bash
# The GPU benchmark suite in one command (< 9 minutes on one H100/H200).
#
#   bash bench/run_gpu_suite.sh            # results into $OUT (device tool) or bench/results/gpu-run
#
# On the device machine, carry the wheels of packages its image lacks (.whl/: pyzmq, pydantic,
# pydantic-core, pydantic-settings, python-dotenv, annotated-types, typing-inspection, soundfile,
# cffi, pycparser, sounddevice; cp312 manylinux) — this script installs them into /tmp/site.
#
# Steps (each bounded by `timeout`, so one stuck step cannot eat the others' time):
#   1. model: the model alone under CUDA graphs (bf16, fp16), batch 1..4096, CUDA events;
#   2. model: every GPU backend of engines (torch CUDA, TensorRT where it opens) through infer();
#   3. capacity: concurrent real-time streams at 0.5-s hop (model side, CUDA graphs bf16);
#   4. stream: the real `rt-tagger stream -` pipeline at batch 1 with the auto-chosen backend
#      (target: p99 capture→published ≤ 3 ms);
#   5. frontend: numba vs torchaudio on this machine's CPU (librosa when installed);
#   6. model-compiled: the model BatchNorm-folded and torch.compile'd (Inductor, then with
#      max-autotune) under CUDA graphs, large batches: how far fused kernels move it to the peak;
#   7. model-fused: the network as fused Triton kernels (the triton-fused backend, engines/triton/;
#      tiles tuned per batch bucket), with and without cuDNN's fused ops competing per layer, next to
#      the eager CUDA-graph runner in the same run;
#   8. fused-backend: batch 1 through infer() (numpy in/out, copies included) for triton-fused and
#      torch-cuda, and the model alone under each one's CUDA graph (quick tuning catalogue);
#   (tune-fused: tune the triton-fused backend (TUNE_CATALOGUE full by default, or quick: minutes
#   less; `auto` uses either), so `stream` runs on it through `auto`; serve: `bench serve`,
#   concurrent real-time streams through one server; SERVE_ARGS adds options, e.g. "--frontend batch
#   --max-batch 1024 --generators 4 --subscribers 4".)
#   9. gpu-tests: tests/engines on the GPU (conformance and parity of torch-cuda and triton-fused,
#      the fused kernels against torch; TensorRT skips with its reason where no runtime supports the
#      GPU). GPU_TESTS="tests/engines/test_x.py …" picks the files; GPU_TESTS_K passes pytest -k.
# STEPS="model-graphs stream" runs only those (all by default); one call of the device tool
# holds about 9 minutes, so steps 1-5, 6 and 7-9 go in three calls (TRITON_CACHE_DIR is kept in /tmp so
# the tests reuse the kernels step 7 compiled).
# What comes back: the JSON files, suite.log and gpu-results.tar.gz (JSON + PNG) — 8 files at most.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results/gpu-run}"
mkdir -p "$OUT"
RES=/tmp/rt-bench-gpu
rm -rf "$RES" && mkdir -p "$RES"
LOG="$OUT/suite.log"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
PY="${PYTHON:-python3}"  # the GPU image's python3 holds torch

{
  echo "== rt-tagger GPU bench suite, $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  if [[ -z "${NO_WHEELS:-}" ]] && ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      && echo "installed wheels: $(ls .whl | tr '\n' ' ')"
  fi
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || true
  $PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")'

  B="$PY -m bench"
  STEPS="${STEPS:-model-graphs model-backends capacity stream frontend model-compiled model-fused fused-backend gpu-tests}"  # also: tune-fused, serve
  export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-/tmp/rt-triton-cache}"
  wanted() { [[ " $STEPS " == *" $1 "* ]]; }
  step() {  # step SECONDS NAME ARGS...
    local secs=$1 name=$2; shift 2
    wanted "$name" || return 0
    echo; echo "== [$name] $(date -u +%T) (limit ${secs}s): $*"
    timeout --signal=INT --kill-after=15 "$secs" $B "$@" --out-dir "$RES" || echo "!! step $name failed or timed out (rc=$?)"
  }
  step 140 model-graphs model --runners cuda-graph-bf16,cuda-graph-fp16 --batches 1,2,4,8,16,32,64,128,256,512,1024,2048,4096 \
       --iters 200 --max-seconds 2 --tag graphs
  step 100 model-backends model --runners backends --batches 1,8,64,512,4096 --iters 100 --max-seconds 2 --tag backends
  step 140 capacity capacity --runner cuda-graph-bf16 --hop 0.5 --max-batch 4096 --hops 10 --min-hops 5 --max-seconds 5
  if wanted tune-fused; then  # the default options, so that `auto` picks triton-fused afterwards
    echo; echo "== [tune-fused] $(date -u +%T)"
    timeout --signal=INT "${TUNE_S:-300}" $PY -m engines.triton tune rt_tagger/default_model --max-batch "${TUNE_MAX_BATCH:-64}" \
      --catalogue "${TUNE_CATALOGUE:-full}" \
      || echo "!! step tune-fused failed or timed out (rc=$?)"
  fi
  step 80 stream stream --backend auto --hop 0.5 --seconds 40 --skip-s 2
  # shellcheck disable=SC2086  # SERVE_ARGS is a list of options
  step "${SERVE_S:-240}" serve serve --backend "${SERVE_BACKEND:-auto}" --streams "${SERVE_STREAMS:-250,500,1000,2000}" \
       --seconds "${SERVE_SECONDS:-20}" --chunk-ms "${SERVE_CHUNK_MS:-100}" --skip-s 5 --stop-at-failure ${SERVE_ARGS:-}
  step 40 frontend frontend --impls numba,librosa,torchaudio
  step 130 model-compiled model --runners compiled-graph-bf16 --batches 1,256,1024,4096 --iters 100 --max-seconds 2 --tag compiled
  step 200 model-compiled model --runners compiled-graph-bf16-autotune --batches 4096 --iters 100 --max-seconds 2 --tag compiled_autotune
  step 300 model-fused model --runners triton-fused-bf16-cudnn,triton-fused-bf16,cuda-graph-bf16 --batches 1,256,1024,4096,8192 \
       --iters 100 --max-seconds 2 --tag triton
  step "${FUSED_BACKEND_S:-150}" fused-backend model \
       --runners triton-fused:catalogue=quick,torch-cuda,triton-fused-bf16-cudnn:catalogue=quick,cuda-graph-bf16 \
       --batches 1 --iters 2000 --max-seconds 3 --tag triton_backend
  if wanted gpu-tests; then
    echo; echo "== [gpu-tests] $(date -u +%T)"
    # shellcheck disable=SC2086  # GPU_TESTS is a list of paths
    # SIGINT at the limit: pytest still prints its summary of what ran
    timeout --signal=INT --kill-after=20 "${GPU_TESTS_S:-240}" $PY -m pytest -v -rs --durations=15 \
      ${GPU_TESTS:-tests/engines} ${GPU_TESTS_K:+-k "$GPU_TESTS_K"} 2>&1
  fi
} 2>&1 | tee "$LOG"

cp "$RES"/*.json "$OUT"/ 2>/dev/null
tar -czf "$OUT/gpu-results.tar.gz" -C "$RES" . 2>/dev/null
echo "results: $(ls "$OUT" | tr '\n' ' ')" | tee -a "$LOG"
