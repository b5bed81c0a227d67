"""Losses against reference implementations, symmetry, degenerate batches; each pretext learns."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engines.model import ModelSpec, ResNetTagger
from training.losses import BarlowTwinsLoss, BYOLLoss, DINOLoss, NTXentLoss, VICRegLoss
from training.pretexts import PRETEXTS, build_pretext


def _ref_ntxent(z_a, z_b, t):
    """Per-sample loop over the SimCLR definition."""
    z = F.normalize(torch.cat([z_a, z_b]), dim=1).double()
    n = z.shape[0]
    b = n // 2
    total = 0.0
    for i in range(n):
        pos = (i + b) % n
        sims = torch.stack([z[i] @ z[k] / t for k in range(n) if k != i])
        total += -(z[i] @ z[pos] / t - torch.logsumexp(sims, 0))
    return total / n


def _ref_vicreg(x, y):
    """From the VICReg authors' code (facebookresearch/vicreg main.py), single process."""
    repr_loss = F.mse_loss(x, y)
    x = x - x.mean(dim=0)
    y = y - y.mean(dim=0)
    std_x = torch.sqrt(x.var(dim=0) + 0.0001)
    std_y = torch.sqrt(y.var(dim=0) + 0.0001)
    std_loss = torch.mean(F.relu(1 - std_x)) / 2 + torch.mean(F.relu(1 - std_y)) / 2
    n, d = x.shape
    cov_x = (x.T @ x) / (n - 1)
    cov_y = (y.T @ y) / (n - 1)

    def off(m):
        return m.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten()

    cov_loss = off(cov_x).pow_(2).sum().div(d) + off(cov_y).pow_(2).sum().div(d)
    return 25 * repr_loss + 25 * std_loss + 1 * cov_loss


def _ref_barlow(z1, z2, lambd):
    """From the Barlow Twins authors' code (facebookresearch/barlowtwins), unbiased std as here."""
    n, d = z1.shape
    z1 = (z1 - z1.mean(0)) / z1.std(0)
    z2 = (z2 - z2.mean(0)) / z2.std(0)
    c = z1.T @ z2 / n
    on = (torch.diagonal(c) - 1).pow(2).sum()
    off = c.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten().pow(2).sum()
    return on + lambd * off


@pytest.fixture
def pair():
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 24, generator=g, dtype=torch.float64), torch.randn(
        16, 24, generator=g, dtype=torch.float64
    )


class TestNTXent:
    def test_matches_reference(self, pair):
        a, b = pair
        assert torch.allclose(NTXentLoss(0.2)(a, b).double(), _ref_ntxent(a, b, 0.2), atol=1e-5)

    def test_symmetric(self, pair):
        a, b = pair
        assert torch.allclose(NTXentLoss()(a, b), NTXentLoss()(b, a), atol=1e-6)

    def test_forward_pass__error_batch_size_1(self):
        with pytest.raises(ValueError, match="batch size 1"):
            NTXentLoss()(torch.randn(1, 8), torch.randn(1, 8))

    def test_error_bad_temperature(self):
        with pytest.raises(ValueError):
            NTXentLoss(temperature=0.0)


class TestVICReg:
    def test_matches_reference(self, pair):
        a, b = pair
        assert torch.allclose(
            VICRegLoss()(a, b).double(), _ref_vicreg(a.float(), b.float()).double(), atol=1e-4
        )

    def test_symmetric(self, pair):
        a, b = pair
        assert torch.allclose(VICRegLoss()(a, b), VICRegLoss()(b, a), atol=1e-5)

    def test_forward_pass__error_batch_size_1(self):
        with pytest.raises(ValueError):
            VICRegLoss()(torch.randn(1, 8), torch.randn(1, 8))


class TestBarlowTwins:
    def test_matches_reference(self, pair):
        a, b = pair
        assert torch.allclose(
            BarlowTwinsLoss(5e-3)(a, b).double(), _ref_barlow(a.float(), b.float(), 5e-3).double(), rtol=1e-3
        )

    def test_symmetric(self, pair):
        a, b = pair
        assert torch.allclose(BarlowTwinsLoss()(a, b), BarlowTwinsLoss()(b, a), rtol=1e-5)

    def test_identical_views_score_better_than_unrelated(self, pair):
        a, b = pair
        assert BarlowTwinsLoss(lambda_param=0.0)(a, a) < 0.1 * BarlowTwinsLoss(lambda_param=0.0)(a, b)

    def test_error_shape_mismatch(self):
        with pytest.raises(ValueError, match="differ"):
            BarlowTwinsLoss()(torch.randn(4, 8), torch.randn(4, 9))


class TestBYOL:
    def test_value_and_symmetry(self, pair):
        a, b = pair
        ref = 0.5 * ((2 - 2 * F.cosine_similarity(a, b)).mean() + (2 - 2 * F.cosine_similarity(b, a)).mean())
        assert torch.allclose(BYOLLoss()(a, b, a, b).double(), ref, atol=1e-5)
        assert torch.allclose(BYOLLoss()(a, b, b, a), BYOLLoss()(b, a, a, b))

    def test_no_gradient_into_target(self, pair):
        p = pair[0].clone().requires_grad_(True)
        z = pair[1].clone().requires_grad_(True)
        BYOLLoss()(p, p, z, z).backward()
        assert z.grad is None and p.grad is not None

    def test_error_not_2d(self):
        with pytest.raises(ValueError):
            BYOLLoss()(torch.randn(4), torch.randn(4), torch.randn(4), torch.randn(4))


class TestDINO:
    def test_matches_reference_and_updates_center(self):
        g = torch.Generator().manual_seed(1)
        s_a, s_b, t_a, t_b = (torch.randn(8, 32, generator=g) for _ in range(4))
        loss_fn = DINOLoss(32, teacher_temp=0.04, student_temp=0.1, center_momentum=0.9)
        got = loss_fn(s_a, s_b, t_a, t_b)
        ta, tb = F.softmax(t_a / 0.04, -1), F.softmax(t_b / 0.04, -1)  # center was zero
        ref = 0.5 * (
            -(tb * F.log_softmax(s_a / 0.1, -1)).sum(-1).mean()
            - (ta * F.log_softmax(s_b / 0.1, -1)).sum(-1).mean()
        )
        assert torch.allclose(got, ref, atol=1e-5)
        assert torch.allclose(loss_fn.center, 0.1 * torch.cat([t_a, t_b]).mean(0, keepdim=True), atol=1e-6)

    def test_symmetric(self):
        g = torch.Generator().manual_seed(2)
        s_a, s_b, t_a, t_b = (torch.randn(8, 16, generator=g) for _ in range(4))
        loss_fn = DINOLoss(16).eval()  # eval: no center update between the two calls
        assert torch.allclose(loss_fn(s_a, s_b, t_a, t_b), loss_fn(s_b, s_a, t_b, t_a), atol=1e-6)

    def test_error_wrong_prototype_count(self):
        with pytest.raises(ValueError, match="prototypes"):
            DINOLoss(16)(*(torch.randn(4, 8) for _ in range(4)))


@pytest.mark.parametrize("name", sorted(PRETEXTS))
def test_pretext_loss_decreases(name):
    """A few optimisation steps on a fixed batch of two noisy views lower each pretext's loss."""
    torch.manual_seed(0)
    model = ResNetTagger(ModelSpec(width=4, blocks=(1, 1), embed_dim=16, n_tags=2))
    # Centering moves the clustering targets themselves (the loss need not fall on a fixed batch);
    # with the center held, the student must fit the teacher, and that is what is checked.
    pretext = build_pretext(name, model, **({"center_momentum": 1.0} if name == "clustering" else {}))
    g = torch.Generator().manual_seed(0)
    base = torch.randn(16, 24, 32, generator=g) * 10 - 40
    views = [base + torch.randn(base.shape, generator=g), base + torch.randn(base.shape, generator=g)]
    opt = torch.optim.Adam([p for p in pretext.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for step in range(25):
        loss, emb = pretext(views)
        opt.zero_grad()
        loss.backward()
        opt.step()
        pretext.after_step(step, 25)
        losses.append(loss.item())
    assert emb.shape == (16, 16)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses


def test_pretext_needs_two_views():
    pretext = build_pretext("vicreg", ResNetTagger(ModelSpec(width=4, blocks=(1,), embed_dim=8, n_tags=1)))
    with pytest.raises(ValueError, match="2 views"):
        pretext([torch.randn(4, 24, 32)])
