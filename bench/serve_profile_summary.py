"""Fold py-spy raw profiles (bench/serve_profile.sh) into the functions where the time goes.

    python bench/serve_profile_summary.py OUT_DIR/pyspy-*.raw [--top 40]

Prints, over all files, each function's share of samples spent in it or below it (inclusive, for
rt_tagger/ and engines/ functions) and in it alone (self, any function). Parent and child processes
(py-spy --subprocesses) are counted together.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path


def fold(paths: list[Path]) -> tuple[int, collections.Counter, collections.Counter]:
    total, inclusive, own = 0, collections.Counter(), collections.Counter()
    for path in paths:
        for line in path.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            # leading "process …" frames name the process (and its parent, under --subprocesses)
            frames = [f for f in stack.split(";") if not f.startswith("process ")]
            if not frames:
                continue
            total += int(n)
            own[frames[-1]] += int(n)
            for f in set(frames):
                inclusive[f] += int(n)
    return total, inclusive, own


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("raw", nargs="+", type=Path)
    ap.add_argument("--top", type=int, default=40)
    a = ap.parse_args()
    total, inclusive, own = fold(a.raw)
    print(f"{total} samples in {len(a.raw)} file(s)")
    print("inclusive %  self %  function")
    for f, n in inclusive.most_common(a.top * 3):
        if "rt_tagger/" in f or "engines/" in f:
            print(f"{100 * n / total:10.1f}  {100 * own[f] / total:6.1f}  {f}")
    print("\nmost self time:")
    for f, n in own.most_common(a.top):
        print(f"{100 * n / total:10.1f}  {f}")


if __name__ == "__main__":
    main()
