"""musicnn (Pons & Serra, 2019) in PyTorch: MTT_musicnn and MSD_musicnn as teachers.

Ported from musicnn 0.1.0 (``musicnn/models.py``, ISC license, Music Technology Group, UPF);
weights converted once from the checkpoints inside its wheel by ``scripts/convert_musicnn.py``
and stored in ``training/teachers/weights/`` (see ``LICENSE.musicnn`` there). TensorFlow is
never needed here.

Front end, exactly as ``musicnn.extractor.batch_data`` computes it with librosa 0.10/0.11:
16 kHz mono, ``melspectrogram(n_fft=512, hop_length=256, n_mels=96)`` (centred frames, zero
padding, periodic Hann, power 2, Slaney mel scale and area normalisation, 0–8000 Hz), cast to
float16 (the models were trained on float16 spectrograms), then ``log10(10000 * x + 1)`` in
float32. musicnn 0.1.0 itself computes that product in float16 under numpy >= 2 (NEP 50) and
overflows to inf on loud music; under numpy 1.x value-based casting made it float32, which is
what the published results and this port use.

The network: a batch-normalised input, five front-end CNNs (two timbral: 7 x 38 and 7 x 67
mel-bin kernels; three temporal: 128, 64 and 32 frames), each max-pooled over frequency and
concatenated (561 channels); three 7-frame 1-D convolutions with dense residual connections
(64 channels each); max and mean pooling over time, interleaved per channel (1506 features); a
200-unit dense layer and the tag logits. Batch normalisation uses TensorFlow's epsilon (1e-3)
and its layer order (after the ReLU).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.teachers.base import Teacher, TeacherOutput, WindowGrid

__all__ = [
    "SAMPLE_RATE",
    "N_FFT",
    "HOP",
    "N_MELS",
    "PATCH_FRAMES",
    "MODELS",
    "MusiCNN",
    "musicnn_logmel",
    "load_musicnn",
    "weights_path",
    "MusicnnTeacher",
    "PUBLISHED_EXAMPLE",
]

SAMPLE_RATE = 16000
N_FFT = 512
HOP = 256
N_MELS = 96
PATCH_FRAMES = 187  # musicnn's input_length=3 s: librosa.time_to_frames(3, 16000, 256, 512) + 1
BN_EPS = 1e-3  # tf.compat.v1.layers.batch_normalization's default

# musicnn's published example (README, tagging_example.ipynb): the clip lives only in its git
# repository (audio/), not in the wheel or sdist. Top-10 from the README; the three values are
# what musicnn's own TF graph gives under numpy 1.x (scripts/convert_musicnn.py --example).
PUBLISHED_EXAMPLE = {
    "file": "joram-moments_of_clarity-08-solipsism-59-88.mp3",
    "model": "MTT_musicnn",
    "top10": [
        "techno",
        "electronic",
        "synth",
        "fast",
        "beat",
        "drums",
        "no vocals",
        "no vocal",
        "dance",
        "ambient",
    ],
    "top3_values": {"techno": 0.5855, "electronic": 0.5408, "synth": 0.4187},
}

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MODELS = ("MTT_musicnn", "MSD_musicnn")


def weights_path(model: str) -> Path:
    if model not in MODELS:
        raise ValueError(f"unknown musicnn model {model!r}: one of {', '.join(MODELS)}")
    return WEIGHTS_DIR / f"{model}.safetensors"


@functools.lru_cache(maxsize=1)
def _slaney_mel_basis() -> np.ndarray:
    """``librosa.filters.mel(sr=16000, n_fft=512, n_mels=96)`` bit for bit, as ``(n_freqs, n_mels)``.

    The project's triangular filterbank on the Slaney scale, rounded to float32 per row and then
    area-normalised, in librosa's order of operations (the float16 cast downstream turns any
    rounding difference into a visible step).
    """
    from engines.frontend import FrontEndSpec, _hz_to_mel, _mel_to_hz, mel_filterbank

    spec = FrontEndSpec(
        sample_rate=SAMPLE_RATE, n_fft=N_FFT, hop_length=HOP, n_mels=N_MELS, mel_scale="slaney"
    )
    weights = mel_filterbank(spec).T.astype(np.float32)
    edges = _mel_to_hz(
        np.linspace(
            _hz_to_mel(np.array(spec.f_min), "slaney"), _hz_to_mel(np.array(spec.f_max), "slaney"), N_MELS + 2
        ),
        "slaney",
    )
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return np.ascontiguousarray(weights.T)


def musicnn_logmel(audio: np.ndarray, chunk_frames: int = 4096) -> np.ndarray:
    """musicnn's input representation of a 16 kHz mono clip: ``(n_frames, 96)`` float32.

    ``n_frames = 1 + len(audio) // 256`` (librosa's centred frames). Computed in chunks of
    ``chunk_frames`` so hour-long files need little memory.
    """
    mel_basis = _slaney_mel_basis()
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"expected mono audio (1-D), got shape {audio.shape}")
    padded = np.pad(audio, N_FFT // 2)  # librosa >= 0.10: center=True, pad_mode="constant"
    n_frames = 1 + len(audio) // HOP
    k = np.arange(N_FFT)
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * k / N_FFT)  # periodic Hann, float64 as librosa's
    out = np.empty((n_frames, N_MELS), dtype=np.float32)
    for a in range(0, n_frames, chunk_frames):
        b = min(n_frames, a + chunk_frames)
        frames = padded[(np.arange(a, b) * HOP)[:, None] + k[None, :]] * window
        # librosa: FFT in float64, stored as complex64, power and mel product in float32
        power = np.abs(np.fft.rfft(frames, axis=1).astype(np.complex64)) ** 2
        out[a:b] = (power @ mel_basis).astype(np.float16)
    return np.log10(np.float32(10000) * out + np.float32(1))


class _ConvBN(nn.Module):
    """Convolution -> ReLU -> batch norm (musicnn's order), then max over frequency if 2-D."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv
        self.bn = (nn.BatchNorm2d if isinstance(conv, nn.Conv2d) else nn.BatchNorm1d)(
            conv.out_channels, eps=BN_EPS
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(F.relu(self.conv(x)))


class MusiCNN(nn.Module):
    """musicnn's network (``build_musicnn``) for inference.

    Args:
        n_tags: output tags (50 for MTT and MSD).
        midend_filters: channels of the mid-end convolutions (64; 512 for MSD_musicnn_big).
        backend_units: units of the penultimate dense layer (200; 500 for the big model).

    Shapes: input ``(batch, frames, 96)`` log-mel (any number of frames >= 1), output logits
    ``(batch, n_tags)``; ``forward(x, with_penultimate=True)`` also returns the 200-d
    penultimate activations (musicnn's ``penultimate`` feature).
    """

    TIMBRAL = ((7, 38), (7, 67))  # int(0.4 * 96), int(0.7 * 96) mel bins
    TEMPORAL = (128, 64, 32)  # frames
    TIMBRAL_FILTERS = 204  # int(1.6 * 128)
    TEMPORAL_FILTERS = 51  # int(1.6 * 32)

    def __init__(self, n_tags: int = 50, midend_filters: int = 64, backend_units: int = 200) -> None:
        super().__init__()
        self.input_bn = nn.BatchNorm2d(1, eps=BN_EPS)
        self.timbral = nn.ModuleList(_ConvBN(nn.Conv2d(1, self.TIMBRAL_FILTERS, k)) for k in self.TIMBRAL)
        self.temporal = nn.ModuleList(
            _ConvBN(nn.Conv2d(1, self.TEMPORAL_FILTERS, (k, 1))) for k in self.TEMPORAL
        )
        frontend_ch = len(self.TIMBRAL) * self.TIMBRAL_FILTERS + len(self.TEMPORAL) * self.TEMPORAL_FILTERS
        self.midend = nn.ModuleList(
            _ConvBN(nn.Conv1d(c, midend_filters, 7)) for c in (frontend_ch, midend_filters, midend_filters)
        )
        self.n_features = frontend_ch + 3 * midend_filters
        self.pool_bn = nn.BatchNorm1d(2 * self.n_features, eps=BN_EPS)
        self.dense = nn.Linear(2 * self.n_features, backend_units)
        self.dense_bn = nn.BatchNorm1d(backend_units, eps=BN_EPS)
        self.out = nn.Linear(backend_units, n_tags)

    def forward(self, x: torch.Tensor, with_penultimate: bool = False):
        x = self.input_bn(x.unsqueeze(1))  # (B, 1, T, 96)
        feats = []
        for block in self.timbral:  # time padded by 3 each side ('same' in time), 'valid' in frequency
            feats.append(block(F.pad(x, (0, 0, 3, 3))).amax(dim=3))
        for block, k in zip(self.temporal, self.TEMPORAL, strict=True):
            # TensorFlow's 'same' padding puts the extra sample of an even kernel at the end
            feats.append(block(F.pad(x, (0, 0, (k - 1) // 2, k // 2))).amax(dim=3))
        h = torch.cat(feats, dim=1)  # (B, 561, T)
        layers = [h]
        for i, block in enumerate(self.midend):
            y = block(F.pad(layers[-1], (3, 3)))
            layers.append(y if i == 0 else y + layers[-1])  # residual from the second conv on
        h = torch.cat(layers, dim=1)  # (B, 753, T)
        # musicnn concatenates [max, mean] on a trailing axis before flattening: interleaved
        pooled = torch.stack([h.amax(dim=2), h.mean(dim=2)], dim=2).flatten(1)
        penultimate = self.dense_bn(F.relu(self.dense(self.pool_bn(pooled))))
        logits = self.out(penultimate)
        return (logits, penultimate) if with_penultimate else logits


def load_musicnn(model: str = "MTT_musicnn", path: str | Path | None = None) -> tuple[MusiCNN, list[str]]:
    """The converted model (eval mode) and its tag names.

    Raises:
        FileNotFoundError: the weights are missing (run scripts/convert_musicnn.py).
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path) if path is not None else weights_path(model)
    if not path.is_file():
        raise FileNotFoundError(
            f"musicnn weights not found at {path}: convert them with scripts/convert_musicnn.py"
        )
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    tags = json.loads(meta["tags"])
    cfg = json.loads(meta.get("config", "{}"))
    net = MusiCNN(n_tags=len(tags), **cfg)
    net.load_state_dict(load_file(str(path)))
    return net.eval(), tags


class MusicnnTeacher(Teacher):
    """MTT_musicnn or MSD_musicnn as a :class:`Teacher` (probabilities = sigmoid outputs).

    Native grid (``grid=None``): 187-frame patches without overlap from frame 0, exactly as
    ``musicnn.extractor(input_length=3, input_overlap=False)``. On a :class:`WindowGrid` each
    window gets the 187 frames centred in it (rt-tagger's 3.09-s window holds 192 full frames).
    """

    def __init__(self, model: str = "MTT_musicnn", device: str = "cpu", batch_size: int = 64) -> None:
        self.model_name = model
        self.name = {"MTT_musicnn": "musicnn-mtt", "MSD_musicnn": "musicnn-msd"}.get(model, model)
        self.device = torch.device(device)
        self.batch_size = batch_size
        net, self._tags = load_musicnn(model)
        self.net = net.to(self.device)

    @property
    def tags(self) -> list[str]:
        return list(self._tags)

    def _predict(self, audio: np.ndarray, grid: WindowGrid | None) -> TeacherOutput:
        logmel = musicnn_logmel(audio)
        if grid is None:  # musicnn's batch_data: every patch that fits, stepping 187 frames
            first = np.arange(0, logmel.shape[0] - PATCH_FRAMES + 1, PATCH_FRAMES, dtype=np.int64)
            times = np.stack([first, first + PATCH_FRAMES], axis=1) * (HOP / SAMPLE_RATE)
        else:
            if logmel.shape[0] < PATCH_FRAMES:  # short clip: pad with the value of silence, log10(1)
                logmel = np.pad(logmel, ((0, PATCH_FRAMES - logmel.shape[0]), (0, 0)))
            starts = grid.starts(len(audio))
            first = (starts + (grid.length - PATCH_FRAMES * HOP) // 2) // HOP
            first = np.clip(first, 0, logmel.shape[0] - PATCH_FRAMES)
            times = grid.times(len(audio))
        probs = np.empty((len(first), len(self._tags)), dtype=np.float32)
        idx = np.arange(PATCH_FRAMES)
        with torch.inference_mode():
            for a in range(0, len(first), self.batch_size):
                batch = torch.from_numpy(logmel[first[a : a + self.batch_size, None] + idx[None, :]])
                probs[a : a + len(batch)] = torch.sigmoid(self.net(batch.to(self.device))).cpu().numpy()
        return TeacherOutput(self.tags, probs, times)
