#!/usr/bin/env bash
# A `bench serve` run with a sampling profile of its server processes (py-spy, raw collapsed
# stacks), to see where a shard's CPU goes under load. Used on the GPU machine:
#
#   bash bench/serve_profile.sh OUT_DIR DELAY_S DURATION_S -- BENCH_SERVE_ARGS...
#
# py-spy attaches DELAY_S after the start (past start-up and the first levels) for DURATION_S to
# the `rt_tagger.cli serve` process and its children (serve --processes spawns them), one raw file
# (<OUT_DIR>/pyspy-<pid>.raw, each stack led by its process);
# bench/serve_profile_summary.py folds them into a table. Needs py-spy on PATH and ptrace rights.
set -uo pipefail
out=${1:?usage: serve_profile.sh OUT_DIR DELAY_S DURATION_S -- ARGS}
delay=${2:?}
duration=${3:?}
shift 3
[[ ${1:-} == -- ]] && shift
mkdir -p "$out"
python3 -m bench serve --out-dir "$out" "$@" &
bench=$!
sleep "$delay"
for pid in $(pgrep -f "rt_tagger.cli serve"); do
  py-spy record --subprocesses -r 200 -d "$duration" --nonblocking --format raw -o "$out/pyspy-$pid.raw" --pid "$pid" \
    >"$out/pyspy-$pid.log" 2>&1 &
done
wait "$bench"
rc=$?
wait
exit $rc
