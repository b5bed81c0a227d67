"""What the tuner chooses from: convolution tiles, stem configurations, and a whole network's plan.

A :class:`Tile` is one launch configuration of :func:`engines.triton.kernels_conv.conv_kernel`;
:data:`CUDNN` stands for cuDNN's fused conv+bias(+add)+ReLU on the same tensors, one more
candidate per convolution. A :class:`TilePlan` is one choice per layer for one batch size: what
tuning produces, what the backend caches (as JSON) and what :class:`engines.triton.network.FusedResNet`
runs with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

__all__ = [
    "Tile",
    "TILE_CANDIDATES",
    "QUICK_TILE_CANDIDATES",
    "STEM_CANDIDATES",
    "QUICK_STEM_CANDIDATES",
    "CUDNN",
    "TilePlan",
    "default_tile",
    "fits",
]

CUDNN = "cudnn"


@dataclass(frozen=True)
class Tile:
    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    pack: int = 1  # output pixels per GEMM row (see conv_kernel)


# Candidates timed per layer shape; those that do not fit a layer (see fits) are skipped. Fewer
# pipeline stages mean fewer loads in flight; pack 2 or 4 reads each input pixel once for 2 or 4
# outputs, at 4/3 or 2× the tensor-core work (docs/engines.md).
TILE_CANDIDATES = [
    Tile(128, 32, 32, 4, 4),
    Tile(256, 32, 32, 4, 4),
    Tile(128, 32, 32, 4, 1),
    Tile(128, 32, 32, 4, 2),
    Tile(256, 32, 32, 8, 2),
    Tile(128, 64, 32, 4, 4),
    Tile(128, 64, 32, 4, 2),
    Tile(128, 64, 64, 4, 4),
    Tile(128, 128, 64, 4, 3),
    Tile(128, 128, 64, 4, 2),
    Tile(256, 128, 64, 8, 3),
    Tile(128, 256, 64, 8, 3),
    Tile(64, 128, 64, 4, 4),
    Tile(128, 64, 32, 4, 4, pack=2),
    Tile(128, 64, 32, 4, 3, pack=2),
    Tile(256, 64, 32, 8, 3, pack=2),
    Tile(256, 64, 32, 4, 3, pack=2),
    Tile(128, 64, 32, 8, 4, pack=2),
    Tile(256, 64, 32, 8, 4, pack=2),
    Tile(128, 128, 32, 4, 3, pack=4),
    Tile(128, 128, 32, 8, 3, pack=4),
    Tile(128, 128, 32, 4, 3, pack=2),
    Tile(128, 128, 64, 4, 3, pack=2),
    Tile(256, 128, 64, 8, 3, pack=2),
    Tile(128, 256, 64, 8, 3, pack=2),
]
# A short list for a quick tuning (a tenth of the compilations): the tiles that won layers of the
# default model in full tunings (docs/engines.md), one of each shape family.
QUICK_TILE_CANDIDATES = [
    Tile(128, 64, 32, 4, 3, pack=2),
    Tile(128, 64, 32, 4, 4),
    Tile(128, 128, 32, 4, 3, pack=2),
    Tile(256, 128, 64, 8, 3),
]
# (pixels per program, warps, kernel) of the stem; kernel "taps" or "rows" (kernels_stem.py)
STEM_CANDIDATES = [
    (128, 4, "taps"),
    (64, 4, "taps"),
    (128, 8, "taps"),
    (32, 2, "taps"),
    (256, 4, "taps"),
    (256, 8, "taps"),
    (128, 4, "rows"),
    (64, 4, "rows"),
    (128, 8, "rows"),
    (256, 4, "rows"),
    (256, 8, "rows"),
]
QUICK_STEM_CANDIDATES = [(128, 4, "taps"), (128, 4, "rows"), (256, 8, "rows")]


def default_tile(c_in: int, c_out: int) -> Tile:
    """A tile that fits every layer of this network (used where a plan names none)."""
    return Tile(128, min(c_out, 64), 32 if c_in % 32 == 0 else 16, 4, 3)


def fits(tile: Tile, c_in: int, c_out: int, out_width: int) -> bool:
    """Whether ``tile`` can run a convolution ``c_in → c_out`` with ``out_width`` output columns."""
    # BLOCK_K either divides C_IN (one tap per K step) or exceeds it (several taps per step,
    # unpacked only); a packed row never straddles two image rows.
    if (tile.pack * c_out) % tile.block_n:
        return False
    if tile.pack > 1:
        return out_width % tile.pack == 0 and c_in % tile.block_k == 0
    return c_in % tile.block_k == 0 or tile.block_k > c_in


Choice = Tile | str | None  # a tile, CUDNN, or None for default_tile


@dataclass
class TilePlan:
    """One network's launch choices: the stem's configuration and each block's two convolutions."""

    stem: tuple[int, int, str] = STEM_CANDIDATES[0]
    convs: list[tuple[Choice, Choice]] = field(default_factory=list)  # per block; [] = all default

    def conv(self, block: int, which: int) -> Choice:
        return self.convs[block][which] if self.convs else None

    def uses_cudnn(self) -> bool:
        return any(c == CUDNN for pair in self.convs for c in pair)

    def to_json(self) -> dict:
        def enc(c: Choice):
            return asdict(c) if isinstance(c, Tile) else c

        return {"stem": list(self.stem), "convs": [[enc(a), enc(b)] for a, b in self.convs]}

    @classmethod
    def from_json(cls, data: dict) -> TilePlan:
        def dec(c) -> Choice:
            return Tile(**c) if isinstance(c, dict) else c

        block, warps, kernel = data["stem"]
        return cls((int(block), int(warps), str(kernel)), [(dec(a), dec(b)) for a, b in data["convs"]])
