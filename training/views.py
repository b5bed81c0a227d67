"""Multi-view sampling: several crops of the same track, at least ``min_gap`` seconds apart.

All of it is batched tensor arithmetic on the bank's device: crop starts for every track of the
batch at once, then one gather. A rate per view gives the resampling pitch shift for free (the
crop is read at fractional positions with linear interpolation).
"""

from __future__ import annotations

import torch

from training.bank import AudioBank

__all__ = ["sample_starts", "gather_crops", "sample_views"]


def sample_starts(
    lengths: torch.Tensor, n_views: int, window: int, min_gap: int, generator: torch.Generator
) -> torch.Tensor:
    """Crop starts ``(B, n_views)`` in ``[0, length − window]``, consecutive views ≥ ``window + min_gap`` apart.

    Where a track is too short for that distance, views are spread as far apart as it allows.
    Draw ``n_views`` uniforms in the range left after reserving the gaps, sort them, then add
    ``k × distance`` to the ``k``-th: every ordered set of starts is reachable and the gaps hold.
    The view order is then shuffled so "view a" is not always the earlier one.
    """
    if n_views < 1:
        raise ValueError("n_views must be ≥ 1")
    dev = lengths.device
    max_start = (lengths - window).clamp(min=0).to(torch.float64)  # (B,)
    dist = torch.full_like(max_start, float(window + min_gap))
    if n_views > 1:
        dist = torch.minimum(dist, max_start / (n_views - 1))
    span = max_start - dist * (n_views - 1)  # ≥ 0
    u = torch.rand(lengths.shape[0], n_views, generator=generator, device=generator.device).to(
        dev, torch.float64
    )
    u, _ = torch.sort(u, dim=1)
    k = torch.arange(n_views, device=dev, dtype=torch.float64)
    starts = u * span[:, None] + k[None, :] * dist[:, None]
    perm = torch.argsort(
        torch.rand(lengths.shape[0], n_views, generator=generator, device=generator.device).to(dev), dim=1
    )
    return torch.gather(starts, 1, perm).floor().to(torch.int64)


def gather_crops(
    bank: AudioBank,
    tracks: torch.Tensor,
    starts: torch.Tensor,
    window: int,
    rates: torch.Tensor | None = None,
) -> torch.Tensor:
    """Crops ``(N, window)`` float32 of ``tracks`` (N,) from ``starts`` (N,).

    With ``rates`` (N,), the crop is read at positions ``start + rate·t`` (linear interpolation),
    i.e. resampled: rate > 1 raises pitch (and tempo). Positions past the track end are clamped.
    """
    off = bank.offsets[tracks]
    last = off + bank.lengths[tracks] - 1  # last valid sample of each track
    t = torch.arange(window, device=bank.device)
    if rates is None:
        idx = torch.minimum(off[:, None] + starts[:, None] + t[None, :], last[:, None])
        return bank.audio[idx].float()
    pos = starts[:, None].to(torch.float32) + rates[:, None].to(torch.float32) * t[None, :].to(torch.float32)
    lo = pos.floor()
    frac = pos - lo
    i0 = torch.minimum(off[:, None] + lo.to(torch.int64), last[:, None])
    i1 = torch.minimum(i0 + 1, last[:, None])
    a0, a1 = bank.audio[i0].float(), bank.audio[i1].float()
    return a0 + frac * (a1 - a0)


def sample_views(
    bank: AudioBank,
    batch: int,
    n_views: int,
    window: int,
    min_gap: int,
    generator: torch.Generator,
    max_semitones: float = 0.0,
    tracks: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_views`` crops of ``batch`` random tracks: returns views ``(n_views, batch, window)`` and the track ids.

    With ``max_semitones`` > 0, each view is resampled by a random ±``max_semitones`` pitch shift
    (the crop reads ``rate × window`` source samples, so the start range accounts for it).
    """
    dev = bank.device
    if tracks is None:
        tracks = torch.randint(len(bank), (batch,), generator=generator, device=generator.device).to(dev)
    rates = None
    span = window
    if max_semitones > 0:
        semis = (
            torch.rand(batch, n_views, generator=generator, device=generator.device).to(dev) * 2 - 1
        ) * max_semitones
        rates = torch.pow(2.0, semis / 12.0)
        span = int(window * 2 ** (max_semitones / 12.0)) + 1
    starts = sample_starts(bank.lengths[tracks], n_views, span, min_gap, generator)  # (B, V)
    flat_tracks = tracks[:, None].expand(-1, n_views).T.reshape(-1)  # view-major order
    flat_starts = starts.T.reshape(-1)
    flat_rates = None if rates is None else rates.T.reshape(-1)
    crops = gather_crops(bank, flat_tracks, flat_starts, window, flat_rates)
    return crops.view(n_views, batch, window), tracks
