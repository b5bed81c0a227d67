"""``rt-tagger bench frontend``: the numba streaming log-mel vs librosa and torchaudio.

Same audio, same parameters (the bundle's :class:`~engines.frontend.FrontEndSpec`). The clip is cut
into hops (default 0.5 s). Per hop:

- numba (``rt_tagger.framer.StreamingFrontEnd``): ``consume_array(block)`` with the hop's new
  samples, the call ``Pipeline.run`` makes with each block it reads from the ring (the pipeline may
  split a hop into a few blocks); it frames, windows and computes log-mel for only the new frames;
- librosa and torchaudio (``engines.logmel_torch.LogMel``): compute the same new frames from the
  smallest slice of audio that holds them (what a non-incremental front end must at least do).

Reported: time per hop (p50/p99/max) and the max |dB| difference of each over the whole clip
against torchaudio on the whole clip (the training front end, the reference).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from bench.common import BenchError, bundle_info, new_document, open_bench_bundle
from bench.machine import machine_info
from bench.stats import summarize
from engines.frontend import FrontEndSpec, logmel_numpy

__all__ = ["add_arguments", "run", "COLUMNS", "plot", "load_audio"]

DEMO = Path(__file__).resolve().parents[1] / "rt_tagger" / "demo" / "demo.ogg"

COLUMNS = [
    ("impl", "front end"),
    ("mode", "per hop"),
    ("n", "hops"),
    ("frames_per_hop", "frames/hop"),
    ("p50_ms", "p50 ms"),
    ("p99_ms", "p99 ms"),
    ("max_ms", "max ms"),
    ("realtime_factor", "x real time"),
    ("max_abs_db_diff", "max |dB| vs torchaudio"),
    ("max_abs_db_diff_f64", "max |dB| vs f64 numpy"),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--file", type=Path, default=DEMO, help=f"audio file (default: the demo clip {DEMO.name})")
    p.add_argument("--seconds", type=float, default=None, help="use only the first N seconds")
    p.add_argument("--hop", type=float, default=0.5, help="hop in seconds (default 0.5)")
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads for torchaudio (default 1, like the framer)"
    )
    p.add_argument(
        "--impls", default="numba,librosa,torchaudio", help="comma list (default: numba,librosa,torchaudio)"
    )


def load_audio(path: Path, spec: FrontEndSpec, seconds: float | None) -> np.ndarray:
    """Mono float32 at the model rate (resampled offline with torchaudio when needed; not timed)."""
    import soundfile as sf

    try:
        audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (OSError, RuntimeError, sf.LibsndfileError) as e:
        raise BenchError(f"cannot read audio {path}: {e}") from None
    audio = audio.mean(axis=1)
    if sr != spec.sample_rate:
        import torch
        import torchaudio.functional as F

        audio = F.resample(torch.from_numpy(audio), sr, spec.sample_rate).numpy()
    if seconds is not None:
        audio = audio[: int(seconds * spec.sample_rate)]
    if audio.size < spec.n_fft:
        raise BenchError(f"audio {path} is shorter than one frame")
    return np.ascontiguousarray(audio, dtype=np.float32)


# -- the implementations: each returns (per-hop ms, all frames (n_mels, F)) ---------------------------


def _hop_bounds(n_samples: int, hop: int) -> list[int]:
    return list(range(hop, n_samples + 1, hop))


def _run_numba(audio: np.ndarray, spec: FrontEndSpec, hop: int) -> tuple[list[float], np.ndarray, str]:
    try:
        from rt_tagger.framer import StreamingFrontEnd
    except ImportError as e:
        raise BenchError(f"numba front end not available ({e})") from None

    def stream(fe, audio_part: np.ndarray) -> tuple[list[float], list[np.ndarray]]:
        times, frames = [], []
        for start in range(0, audio_part.size - hop + 1, hop):
            block = audio_part[start : start + hop].reshape(-1, 1)  # (n, channels), as read from the ring
            t0 = time.perf_counter()
            k = fe.consume_array(block)
            times.append((time.perf_counter() - t0) * 1e3)
            frames.append(fe.window()[:, fe.spec.window_frames - k :].copy())
        return times, frames

    # Kernels compile (or load from numba's cache) in the constructor; a short untimed pass warms caches.
    stream(StreamingFrontEnd(spec, spec.sample_rate, 1), audio[: 4 * hop])
    times, frames = stream(StreamingFrontEnd(spec, spec.sample_rate, 1), audio)
    return times, np.concatenate(frames, axis=1), "incremental (consume_array per hop, as the pipeline)"


def _slices(n_samples: int, spec: FrontEndSpec, hop: int):
    """(first_frame, last_frame_exclusive, sample slice) of the new frames at each hop."""
    done = 0
    for end in _hop_bounds(n_samples, hop):
        total = spec.frames_for(end)
        if total > done:
            yield done, total, slice(done * spec.hop_length, (total - 1) * spec.hop_length + spec.n_fft)
        else:
            yield done, done, None
        done = total


def _run_sliced(audio: np.ndarray, spec: FrontEndSpec, hop: int, fn) -> tuple[list[float], np.ndarray]:
    for _, _, sl in list(_slices(audio.size, spec, hop))[:4]:  # warm-up
        if sl is not None:
            fn(audio[sl])
    times, frames = [], []
    for _, _, sl in _slices(audio.size, spec, hop):
        t0 = time.perf_counter()
        out = fn(audio[sl]) if sl is not None else np.zeros((spec.n_mels, 0), np.float32)
        times.append((time.perf_counter() - t0) * 1e3)
        frames.append(out)
    return times, np.concatenate(frames, axis=1)


def _librosa_fn(spec: FrontEndSpec):
    try:
        import librosa
    except ImportError:
        raise BenchError("librosa is not installed (pip install librosa)") from None
    # The mel basis is built once (librosa.feature.melspectrogram would rebuild it on every call).
    basis = librosa.filters.mel(
        sr=spec.sample_rate, n_fft=spec.n_fft, n_mels=spec.n_mels, fmin=spec.f_min, fmax=spec.f_max,
        htk=spec.mel_scale == "htk", norm=None,
    )  # fmt: skip

    def fn(y: np.ndarray) -> np.ndarray:
        stft = librosa.stft(
            y,
            n_fft=spec.n_fft,
            hop_length=spec.hop_length,
            win_length=spec.n_fft,
            window="hann",
            center=False,
        )
        s = basis @ (np.abs(stft) ** spec.power)
        return librosa.power_to_db(s, ref=spec.ref, amin=spec.amin, top_db=None)

    return fn


def _torchaudio_fn(spec: FrontEndSpec):
    import torch

    from engines.logmel_torch import LogMel

    logmel = LogMel(spec).eval()

    def fn(y: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return logmel(torch.from_numpy(y)).numpy()

    return fn


def run(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    bundle, label = open_bench_bundle(args.bundle)
    spec = bundle.frontend
    audio = load_audio(args.file, spec, args.seconds)
    hop = int(round(args.hop * spec.sample_rate))
    info = machine_info()
    doc = new_document(
        "frontend",
        info,
        {
            "file": str(args.file),
            "seconds": audio.size / spec.sample_rate,
            "hop_s": args.hop,
            "hop_samples": hop,
            "torch_threads": args.threads,
            "impls": args.impls,
        },
    )
    doc["bundle"] = bundle_info(bundle, label)
    ref = _torchaudio_fn(spec)(audio)  # whole clip: the training front end
    ref64 = logmel_numpy(audio, spec)  # float64 numpy reference: shows float32 rounding in the others
    doc["settings"]["reference_frames"] = int(ref.shape[1])
    frames_per_hop = hop / spec.hop_length
    per_hop: dict[str, list[float]] = {}
    for impl in [s.strip() for s in args.impls.split(",") if s.strip()]:
        if impl == "numba":
            try:
                times, frames, how = _run_numba(audio, spec, hop)
            except BenchError as e:
                doc["notes"].append(f"numba skipped: {e}")
                continue
        elif impl == "librosa":
            try:
                fn = _librosa_fn(spec)
            except BenchError as e:
                doc["notes"].append(f"librosa skipped: {e}")
                continue
            times, frames = _run_sliced(audio, spec, hop, fn)
            how = "new frames from minimal slice"
        elif impl == "torchaudio":
            times, frames = _run_sliced(audio, spec, hop, _torchaudio_fn(spec))
            how = "new frames from minimal slice"
        else:
            raise BenchError(f"unknown front end {impl!r}: choose from numba, librosa, torchaudio")
        n = min(frames.shape[1], ref.shape[1])
        diff = float(np.max(np.abs(frames[:, :n].astype(np.float64) - ref[:, :n]))) if n else None
        diff64 = float(np.max(np.abs(frames[:, :n].astype(np.float64) - ref64[:, :n]))) if n else None
        s = summarize(times)
        doc["results"].append({
            "impl": impl, "mode": how, **{k if k == "n" else f"{k}_ms": v for k, v in s.items()},
            "frames_per_hop": frames_per_hop, "frames_compared": n,
            "realtime_factor": args.hop * 1e3 / s["mean"] if s["mean"] else None,
            "max_abs_db_diff": diff, "max_abs_db_diff_f64": diff64, "samples_ms": [round(x, 5) for x in times],
        })  # fmt: skip
        per_hop[impl] = times
    by = {r["impl"]: r for r in doc["results"]}
    doc["summary"] = {f"{k} p99 ms/hop": v["p99_ms"] for k, v in by.items()}
    if "numba" in by:
        doc["summary"]["numba max |dB| vs torchaudio"] = by["numba"]["max_abs_db_diff"]
        for other in ("librosa", "torchaudio"):
            if other in by:
                doc["summary"][f"numba speed-up vs {other} (p50)"] = (
                    by[other]["p50_ms"] / by["numba"]["p50_ms"]
                )
    doc["notes"].append("first 4 hops run once untimed (warm-up); torchaudio whole clip is the dB reference")
    return doc


def plot(doc: dict, stem) -> list:
    from bench.plots import latency_plot

    series = {r["impl"]: r["samples_ms"] for r in doc["results"]}
    return [latency_plot(series, stem.with_name(stem.name + "-per-hop.png"), "front end: time per hop")]
