#!/usr/bin/env bash
# `bench serve` with stream groups on a GPU machine, one level per call of bench (a level's JSON
# survives a later level running out of time). Usage on the device machine, from the repo root:
#   OUT=/path LEVELS="20000 50000 100000" bash bench/run_serve_groups.sh
# READ_GROUPS=1: subscribers read group frames (tagg.<group>) instead of every stream's topic.
# ALIGNED=1: every group on one shared chunk clock (bursts of windows; default: each on its own).
# What held 100 000 streams on one H200 (p99 80 ms, 2026-12-03):
#   LEVELS=100000 PROCS=12 GROUP=500 READ_GROUPS=1 SECONDS_PER_LEVEL=45 SKIP_S=8 LEVEL_S=200
set -u
OUT="${OUT:?OUT: where results go}"
LEVELS="${LEVELS:-20000 50000 100000}"
TUNE_S="${TUNE_S:-120}"
echo "tuning the fused Triton kernels (at most ${TUNE_S} s; without a tuning auto picks torch-cuda)" >&2
timeout "$TUNE_S" python3 -m engines.triton tune rt_tagger/default_model --max-batch 1024 --catalogue quick 2>&1 | tail -3
for n in $LEVELS; do
  echo "level $n" >&2
  timeout "${LEVEL_S:-200}" python3 -m bench serve --group-size "${GROUP:-1000}" --streams "$n" \
    --seconds "${SECONDS_PER_LEVEL:-12}" --skip-s "${SKIP_S:-5}" --chunk-ms 100 --processes "${PROCS:-12}" --generators 4 \
    --subscribers 4 ${READ_GROUPS:+--read-groups} ${ALIGNED:+--aligned-groups} --max-batch 1024 --backend auto --out "$OUT/level-$n" 2>&1 | grep -A3 "^streams"
  tail -3 /tmp/rt-bench-serve-*/server-"$n".stderr 2>/dev/null
  python3 -c "import json,sys; [print('t', r['t_s'], 'n', r['n'], 'p50 %.0f p99 %.0f' % (r['p50_ms'], r['p99_ms'])) for r in json.load(open(sys.argv[1]))['results'][0].get('latency_over_time', [])]" "$(ls "$OUT"/level-"$n"/*.json | head -1)" 2>/dev/null
done
