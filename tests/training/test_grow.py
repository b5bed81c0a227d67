"""A wider tagger grown from a narrower one computes what the narrow one did, and can learn."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engines.model import ModelSpec, ResNetTagger
from training.grow import grow_state

ROOT = Path(__file__).resolve().parents[2]


def _mel(n: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return -60 + 20 * torch.randn(n, 96, 192, generator=g)


def test_the_shipped_model_grown_to_width_48_gives_its_tags_and_embedding():
    from training.multitask.pipeline import init_backbone

    bundle = ROOT / "rt_tagger" / "default_model"
    manifest = json.loads((bundle / "manifest.json").read_text())
    narrow = ResNetTagger(ModelSpec.model_validate(manifest["model"]))
    init_backbone(narrow, str(bundle), list(manifest["tags"]))
    torch.manual_seed(0)
    wide = ResNetTagger(ModelSpec.model_validate({**manifest["model"], "width": 48}))
    init_backbone(wide, str(bundle), list(manifest["tags"]))
    assert wide.feature_dim == 384 and sum(p.numel() for p in wide.parameters()) > 2 * sum(
        p.numel() for p in narrow.parameters()
    )
    mel = _mel()
    with torch.no_grad():
        (a, ea), (b, eb) = narrow.eval()(mel), wide.eval()(mel)
    assert torch.allclose(a, b, atol=1e-4) and torch.allclose(ea, eb, atol=1e-4)


def test_the_new_channels_compute_and_take_gradients():
    torch.manual_seed(0)
    narrow = ResNetTagger(ModelSpec(width=8, n_tags=5, embed_dim=16))
    narrow.train()(_mel(8))  # running statistics away from their defaults
    wide = ResNetTagger(ModelSpec(width=12, n_tags=5, embed_dim=16))
    wide.load_state_dict(grow_state(wide, narrow.state_dict()))
    mel = _mel(8)
    for mode in ("eval", "train"):  # batch statistics of the old channels are the old ones too
        (a, _), (b, _) = getattr(narrow, mode)()(mel), getattr(wide, mode)()(mel)
        assert torch.allclose(a, b, atol=1e-4), mode
    new_in = wide.stages[0][0].conv1.weight[:8, 8:]
    assert torch.count_nonzero(new_in) == 0 and torch.count_nonzero(wide.stem[0].weight[8:]) > 0
    wide(mel)[0].square().sum().backward()
    assert torch.count_nonzero(wide.stages[0][0].conv1.weight.grad[:8, 8:]) > 0  # the zeros learn
    assert torch.count_nonzero(wide.embed[0].weight.grad[:, 64:96]) > 0  # new features reach the head


def test_growing_is_refused_where_it_would_not_fit():
    from training.multitask.pipeline import MultitaskError, init_backbone

    wide = ResNetTagger(ModelSpec(width=12, n_tags=5, embed_dim=16))
    wider = ResNetTagger(ModelSpec(width=16, n_tags=5, embed_dim=16))
    with pytest.raises(ValueError, match="larger than the wide"):
        grow_state(wide, wider.state_dict())
    with pytest.raises(ValueError, match="not in the wide model"):
        grow_state(wide, {"nope.weight": torch.zeros(1)})
    bundle = ROOT / "rt_tagger" / "default_model"
    other_blocks = ResNetTagger(ModelSpec(width=48, blocks=(2, 2, 2), n_tags=5))
    with pytest.raises(MultitaskError, match="only the width may grow"):
        init_backbone(other_blocks, str(bundle))
    with pytest.raises(MultitaskError, match="wider than the recipe's model.width 16"):
        init_backbone(ResNetTagger(ModelSpec(width=16, n_tags=5)), str(bundle))
