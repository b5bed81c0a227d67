#!/usr/bin/env bash
# A/B of the single-stream latency (`rt-tagger bench stream`): this tree against a base commit, in
# interleaved rounds on one machine, because a host's own noise (other sessions, clocks) moves the
# p99 more than most changes do.
#
#   bash bench/stream_ab.sh prepare BASE   # here: BASE's versions of the files that differ -> .ab_base/
#   bash bench/stream_ab.sh run            # on the device machine (carry .ab_base and .whl)
#
# `run` copies the tree to /tmp/ab_base, puts BASE's files back there, installs the carried wheels
# (.whl/, as bench/run_gpu_suite.sh does) and plays ROUNDS rounds of "new" then "base", SECS seconds
# each (default 2 rounds of 40 s, about 2 minutes a round with start-up; NO_WHEELS=1 skips the
# wheels, e.g. in a venv that has them). Results go to $OUT as
# stream-*-{new,base}_rN.json; one line a run is printed. BACKEND (default auto) is passed on;
# carry a tuning into rt_tagger/default_model/compiled/ if auto is to pick triton-fused.
set -euo pipefail
cd "$(dirname "$0")/.."
AB=.ab_base

case "${1:-}" in
  prepare)
    base=${2:?usage: stream_ab.sh prepare BASE}
    rm -rf "$AB" && mkdir -p "$AB/files"
    git rev-parse --short "$base" >"$AB/BASE"
    : >"$AB/absent"  # files BASE does not have (removed from the base copy)
    git diff --name-only "$base" -- . | while read -r f; do
      if git cat-file -e "$base:$f" 2>/dev/null; then
        mkdir -p "$AB/files/$(dirname "$f")"
        git show "$base:$f" >"$AB/files/$f"
      else
        echo "$f" >>"$AB/absent"
      fi
    done
    echo "base $(cat "$AB/BASE"): $(find "$AB/files" -type f | wc -l) file(s) differ, $(wc -l <"$AB/absent") absent there"
    ;;
  run)
    [[ -f $AB/BASE ]] || { echo "stream_ab.sh: run 'prepare BASE' first (no $AB here)" >&2; exit 2; }
    OUT=${OUT:-bench/results/ab-run}
    mkdir -p "$OUT" /tmp/ab_res
    PY=${PYTHON:-python3}
    [[ $PY == */* && $PY != /* ]] && PY=$PWD/$PY  # the base side runs from another folder
    if [[ -z ${NO_WHEELS:-} ]] && ls .whl/*.whl >/dev/null 2>&1; then
      $PY -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
    fi
    rm -rf /tmp/ab_base && mkdir /tmp/ab_base
    tar --exclude=./.git --exclude=./.venv -cf - . | tar -xf - -C /tmp/ab_base
    cp -r "$AB/files/." /tmp/ab_base/
    (cd /tmp/ab_base && xargs -r rm -f <"$AB/absent")
    for round in $(seq 1 "${ROUNDS:-2}"); do
      for side in new base; do
        dir=$PWD
        [[ $side == base ]] && dir=/tmp/ab_base
        line=$(cd "$dir" && PYTHONPATH="/tmp/site:$dir" timeout 150 $PY -m bench stream --backend "${BACKEND:-auto}" \
          --hop 0.5 --seconds "${SECS:-40}" --skip-s 2 --out-dir /tmp/ab_res --tag "${side}_r$round" 2>&1 \
          | grep -E 'capture->publish p|write->publish p|backend:' | tr '\n' ' ' || true)
        echo "$side r$round (base $(cat "$AB/BASE")): ${line:-failed}"
        cp /tmp/ab_res/*.json "$OUT/" 2>/dev/null || true  # after each run: a cut call keeps what ran
      done
    done
    ;;
  *)
    echo "usage: bash bench/stream_ab.sh prepare BASE | run" >&2
    exit 2
    ;;
esac
