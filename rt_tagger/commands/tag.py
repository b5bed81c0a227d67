"""``rt-tagger tag FILE…``: offline tagging, its result documents (``--json``) and taggrams.

A file with no tagged window (all below the silence floor) is reported as ``silence``; with a model
that has a music / not-music head (manifest group ``music``) a file whose mean music probability is
below that tag's threshold is ``not music``. Neither lists tags: no confident or zero scores.

Nothing is half-written: every output path is checked before any work, ``--json FILE`` is written
atomically, and only after every input was processed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from engines.cache import write_atomic
from engines.errors import UserError
from rt_tagger.commands.settings_from_args import settings_from_args

__all__ = ["cmd_tag", "file_on", "file_state", "file_summary", "file_top", "result_document", "taggram_path"]


def check_writable(path: Path, what: str) -> None:
    """Fail before any work if ``path`` cannot be written (no folders are created for it)."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UserError(f"{what} {path} is a directory")
    if not parent.is_dir():
        raise UserError(f"cannot write {what} {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UserError(f"cannot write {what} {path}: folder not writable")


def file_state(res, bundle) -> str | None:
    """The file's state: "silence" (no tagged window), "music" / "not_music" (the mean of the music
    head's probability against its threshold), or None when the model has no music head."""
    if not res.windows:
        return "silence"
    m = bundle.manifest.music_index
    if m is None:
        return None
    return "music" if res.clip_scores[m] >= bundle.manifest.thresholds[m] else "not_music"


def file_top(res, bundle, state: str | None, k: int) -> list[tuple[str, float]]:
    """The whole-file top tags, without the music gate; none for silence or not music."""
    if state in ("silence", "not_music"):
        return []
    m = bundle.manifest.music_index
    gate = None if m is None else bundle.tags[m]
    return [(t, s) for t, s in res.clip_top(k + 1) if t != gate][:k]


def file_on(res, bundle, state: str | None) -> list[dict]:
    """The tags on over the whole file: those whose mean score reaches the tag's calibrated
    threshold (where a live stream turns it on), furthest past it first; none for silence or not
    music. Raw scores are not comparable across tags (each has its own threshold): this is the
    file's answer, ``top`` the largest scores."""
    if state in ("silence", "not_music"):
        return []
    scores, thresholds, groups = res.clip_scores, bundle.manifest.thresholds, bundle.manifest.tag_groups
    on = [i for i in range(len(scores)) if groups[i] != "music" and scores[i] >= thresholds[i]]
    on.sort(key=lambda i: -scores[i] / thresholds[i])
    return [
        {"tag": res.tags[i], "group": groups[i], "score": float(scores[i]), "threshold": float(thresholds[i])}
        for i in on
    ]


def _window_rows(res) -> list[tuple[float, float, str | None, object]]:
    """``(start_s, end_s, state, window)`` for every window in stream order, silent ones included."""
    rows = [(w.start_s, w.end_s, w.state, w) for w in res.windows]
    rows += [(w.start_s, w.end_s, "silence", None) for w in res.silent_windows]
    return sorted(rows, key=lambda r: r[0])


def result_document(f: Path, res, processing_s: float, bundle, top_k: int, per_window: bool) -> dict:
    """The ``--json`` document of one file."""
    state = file_state(res, bundle)
    rows = _window_rows(res)
    doc = {
        "file": str(f),
        "duration_s": round(res.duration_s, 3),
        "processing_s": round(processing_s, 3),
        "model": bundle.manifest.name,
        "weights_sha256": bundle.manifest.weights_sha256[:12],
        "backend": res.backend.get("name"),
        "window_s": round(res.window_seconds, 4),
        "hop_s": round(res.hop_seconds, 4),
        "state": state,
        "windows": len(res.windows),
        "silent_windows": len(res.silent_windows),
        "window_states": {s: sum(1 for r in rows if r[2] == s) for s in ("music", "not_music", "silence")},
        "on": file_on(res, bundle, state),
        "top": [{"tag": t, "score": s} for t, s in file_top(res, bundle, state, top_k)],
        "scores": dict(zip(res.tags, map(float, res.clip_scores), strict=True)) if res.windows else {},
        "events": [e.model_dump() for e in res.events],
        "counters": res.counters,
    }
    if per_window:
        doc["per_window"] = [
            {"start_s": round(start, 4), "end_s": round(end, 4), "state": "silence"}
            if w is None
            else {
                "start_s": round(start, 4),
                "end_s": round(end, 4),
                "state": state_w,
                "top": [{"tag": t, "score": s} for t, s in w.top],
                "probabilities": [float(x) for x in w.probabilities],
                "scores": [float(x) for x in w.scores],
            }
            for start, end, state_w, w in rows
        ]
    return doc


def _state_text(state: str | None, top: list[tuple[str, float]], on: list[dict] | None = None) -> str:
    """What one line says: "silence", "not music", or the tags with their scores (a whole file's
    line names the tags on over the file first)."""
    if state == "silence":
        return "silence"
    if state == "not_music":
        return "not music"
    text = "  ".join(f"{t} {s:.3f}" for t, s in top) or "(no tags)"
    if on is None:
        return text
    return f"on: {', '.join(t['tag'] for t in on) or 'none'} | top: {text}"


def file_summary(res, bundle, top_k: int) -> str:
    """A whole file's line: silence, not music, or the tags on over it and the largest scores."""
    state = file_state(res, bundle)
    return _state_text(state, file_top(res, bundle, state, top_k), file_on(res, bundle, state))


def taggram_path(taggram: Path, index: int, f: Path, n_files: int) -> Path:
    """``--taggram PNG`` itself for one file; ``PNG-stem_<i>_<file-stem>.png`` for each of several."""
    if n_files == 1:
        return taggram
    return taggram.with_name(f"{taggram.stem}_{index}_{Path(f).stem}{taggram.suffix}")


def cmd_tag(args) -> int:
    from rt_tagger.bundled_model import load_bundle
    from rt_tagger.pipeline import Pipeline
    from rt_tagger.sources import FileSource

    st = settings_from_args(args)
    if args.json and args.json != "-":
        check_writable(Path(args.json), "--json output")
    if args.taggram:
        check_writable(args.taggram, "--taggram output")
    bundle = load_bundle(st.bundle)
    # Open every file first: a bad one fails before any work (and before any output).
    for f in args.files:
        FileSource(f, block_size=st.audio.block_size).stop()
    results = []
    with Pipeline(bundle, st, keep_windows=True) as pipe:
        for f in args.files:
            src = FileSource(
                f, block_size=st.audio.block_size, realtime=args.realtime, ring_seconds=st.audio.ring_seconds
            )
            t0 = time.perf_counter()
            res = pipe.run(src)
            results.append((f, res, time.perf_counter() - t0))
    docs = [
        result_document(f, res, secs, bundle, st.aggregator.top_k, args.per_window)
        for f, res, secs in results
    ]
    console = sys.stderr if args.json == "-" else sys.stdout  # stdout stays pure JSON with --json
    if args.taggram:
        import numpy as np

        from rt_tagger.taggram import draw_taggram

        for i, (f, res, _) in enumerate(results):
            if not res.windows:
                print(f"{f}: no taggram (silence: no window was tagged)", file=console)
                continue
            out = taggram_path(args.taggram, i, f, len(results))
            probs = np.array([w.probabilities for w in res.windows]).reshape(-1, len(res.tags))
            draw_taggram(probs, res.tags, out, window_ends_s=[w.end_s for w in res.windows], title=str(f))
            print(f"{f}: taggram {out}", file=console)
    if args.json:
        text = json.dumps(docs if len(docs) > 1 else docs[0], indent=2) + "\n"
        if args.json == "-":
            sys.stdout.write(text)
        else:
            write_atomic(Path(args.json), text.encode())
    if args.json != "-":
        for doc, (f, res, _) in zip(docs, results, strict=True):
            top = [(t["tag"], t["score"]) for t in doc["top"]]
            print(f"{f}: {_state_text(doc['state'], top, doc['on'])}")
            if args.per_window:
                for start, end, state, w in _window_rows(res):
                    print(f"  {start:8.2f}-{end:8.2f}s  {_state_text(state, w.top if w else [])}")
    return 0
