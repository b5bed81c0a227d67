#!/usr/bin/env bash
# Calibrate and evaluate a multi-task run's weights on the ORIGINAL audio, here on the CPU.
#
#   bash training/multitask/eval_original.sh RESULT_DIR RUN_DIR [--export BUNDLE]
#
# RESULT_DIR is what gpu_run.sh brought back ($OUT: result.json and the weights, see below).
# On the GPU machine the student is scored on the Opus packs it trained on; a user runs it on
# the original audio, so the numbers that count are computed here: the run's weights, its
# vocabulary, the teachers' labels of the original audio (prepare.sh labels), and the corpora as
# built (real_valid / real_test cropped to the centre 45 s as the packs were; the training split at 60 s,
# unlabelled: the capped units' on-rate is held on its windows too). Thresholds are
# calibrated again on the original valid audio. Writes RUN_DIR/result.json and metrics.json.
# WINDOW_FRAMES=N scores the weights on windows of N frames, against the labels that
# `WINDOW_FRAMES=N prepare.sh labels` made for that window.
set -euo pipefail
res=${1:?usage: eval_original.sh RESULT_DIR RUN_DIR [--export BUNDLE]}
run=${2:?usage: eval_original.sh RESULT_DIR RUN_DIR [--export BUNDLE]}
shift 2
PY=${PY:-.venv/bin/python}
DATA=${DATA:-/work/data}
mkdir -p "$run"
# the weights the run's valid split picked (selected.safetensors, or bundle/ in results from before
# 2026-12-04), else the last step's; WEIGHTS=last takes the last step's
# (a wide model's come in parts, NAME.part00 …: joined here)
weights=""
for w in selected.safetensors bundle/weights.safetensors last.safetensors; do
  [[ ${WEIGHTS:-} == last && $w != last.safetensors ]] && continue
  if [[ -f $res/$w || -f $res/$w.part00 ]]; then weights=$res/$w; break; fi
done
[[ -n $weights ]] || { echo "error: no weights in $res" >&2; exit 2; }
echo "weights: $weights"
if [[ -f $weights ]]; then cp "$weights" "$run/model.safetensors"; else cat "$weights".part* >"$run/model.safetensors"; fi
# where the weights came from, for the bundle's provenance (with the runs a soup averaged)
rm -f "$run/weights_from.json"
if [[ -f $res/result.json ]]; then
  $PY -c "import json, sys; r = json.load(open(sys.argv[2])); json.dump({'weights': sys.argv[1], 'run': r['recipe'].get('name'), 'soup_of': r.get('soup_of')}, open(sys.argv[3], 'w'), indent=1)" \
    "$weights" "$res/result.json" "$run/weights_from.json"
fi
if [[ -f $res/vocab.json ]]; then
  cp "$res/vocab.json" "$run/vocab.json"
else  # result.json holds the vocabulary too
  $PY -c "import json, sys; json.dump(json.load(open(sys.argv[1]))['vocab'], open(sys.argv[2], 'w'), indent=2)" \
    "$res/result.json" "$run/vocab.json"
fi
source "$(dirname "${BASH_SOURCE[0]}")/window_labels.sh"  # LABELS, WINDOW_SET (WINDOW_FRAMES)
cp "$LABELS"/labels_real_valid.npz "$LABELS"/labels_real_test.npz "$run/"
rm -f "$run/result.json" "$run/metrics.json"
$PY -m training.multitask --recipe configs/train_multitask.toml --out "$run" --no-progress --set device=\"cpu\" \
  --set "data.real_train=\"$DATA/real\"" --set data.real_train_seconds=60 \
  --set "data.real_valid=\"$DATA/real_valid\"" --set "data.real_test=\"$DATA/real_test\"" --set data.real_eval_seconds=45 \
  --set "data.synth_calib=\"$DATA/synth_calib\"" --set "data.synth_test=\"$DATA/synth_heldout\"" \
  --set "data.not_music_test=\"$DATA/not_music_test\"" "${WINDOW_SET[@]}" "$@"
