"""The musicnn teachers inside the training step (training/multitask/online_teacher.py): the same
targets as the stored labels on the same windows, and which rows and units a batch gets relabelled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from training.augment import mix_in
from training.bank import AudioBank
from training.multitask.online_teacher import OnlineTeacher, OnlineTeacherSpec
from training.multitask.vocab import build_vocab, teacher_target
from training.teachers.base import WindowGrid
from training.teachers.musicnn import MODELS, MusicnnTeacher, weights_path

pytestmark = pytest.mark.skipif(
    not all(weights_path(m).is_file() for m in MODELS),
    reason="converted musicnn weights missing: run scripts/convert_musicnn.py in musicnn's environment",
)

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "rt_tagger" / "demo" / "demo.ogg"  # real music (a Debian soundtrack excerpt)
WINDOW = 49408  # the default front end's 3.09-s window at 16 kHz
SPECS = build_vocab(["rock", "electronic", "ambient", "piano", "guitar", "fast", "drums"])


@pytest.fixture(scope="module")
def demo() -> np.ndarray:
    audio, sr = sf.read(DEMO, dtype="float32")
    assert sr == 16000 and audio.ndim == 1
    return audio[: 12 * sr]


@pytest.fixture(scope="module")
def teacher() -> OnlineTeacher:
    return OnlineTeacher(SPECS, WINDOW)


def test_targets_equal_the_stored_labels_rule(teacher, demo):
    # label.py's path: each teacher on the whole clip, a window grid, vocab.teacher_target per unit.
    # On a hop of whole frames the online teacher sees exactly the same 187 frames.
    grid = WindowGrid(WINDOW, 256 * 70)
    tables = {}
    for model, name in (("MTT_musicnn", "musicnn-mtt"), ("MSD_musicnn", "musicnn-msd")):
        out = MusicnnTeacher(model).predict(demo, grid)
        tables[name] = (out.tags, out.probs)
    starts = grid.starts(len(demo))
    waves = torch.from_numpy(np.stack([demo[s : s + WINDOW] for s in starts]))
    got = teacher(waves).numpy()
    covered = teacher.covered.numpy()
    assert covered.sum() == sum(bool(s.teacher or s.real_teacher) for s in SPECS)
    for j, s in enumerate(SPECS):
        if not covered[j]:
            assert np.all(got[:, j] == 0), s.name
            continue
        want = teacher_target(tables, s.teacher or s.real_teacher)
        # float32 FFT here, float64 in the stored path: a float16 step of the mel power at most
        assert np.abs(got[:, j] - want).max() < 2e-3, s.name
    assert got[:, covered].std(axis=0).max() > 0.02  # real music: the windows differ


def _batch(demo: np.ndarray, n_real: int, n_synth: int, n_other: int):
    rng = np.random.default_rng(0)
    n = n_real + n_synth + n_other
    starts = rng.integers(0, len(demo) - WINDOW, n)
    wave = torch.from_numpy(np.stack([demo[s : s + WINDOW] for s in starts]))
    target = torch.from_numpy(rng.random((n, len(SPECS))).astype(np.float32))
    mask = torch.ones(n, len(SPECS))
    return wave, target, mask


def _relabel(teacher, demo, spec: OnlineTeacherSpec, n_real: int, n_synth: int, n_other: int):
    """A batch of the demo's windows, and what ``teacher.relabel`` makes of it."""
    wave, target, mask = _batch(demo, n_real, n_synth, n_other)
    bank = AudioBank.from_arrays([demo], 16000, WINDOW)
    new = teacher.relabel(spec, wave, target, mask, n_real, n_synth, bank, torch.Generator().manual_seed(1))
    return (wave, target, mask), new


def test_relabel_mixes_real_windows_and_labels_them(teacher, demo):
    (wave, target, mask), (w2, t2, m2) = _relabel(teacher, demo, OnlineTeacherSpec(mix_p=1.0), 6, 4, 2)
    assert not torch.equal(w2[:6], wave[:6]) and torch.equal(w2[6:], wave[6:])
    covered = teacher.covered
    assert torch.allclose(t2[:6][:, covered], teacher(w2[:6])[:, covered])  # the mix's labels
    assert torch.equal(t2[:6][:, ~covered], target[:6][:, ~covered])
    assert torch.equal(t2[6:], target[6:]) and torch.equal(m2[6:], mask[6:])  # synth=0: untouched
    vocals = [s.vocals for s in SPECS].index(True)
    assert torch.all(m2[:6, vocals] == 0)  # no singing teacher here: unlabelled on a mix
    m2[:6, vocals] = 1
    assert torch.equal(m2, mask)
    # the caller's tensors are not changed
    assert torch.equal(wave, _batch(demo, 6, 4, 2)[0])


def test_relabel_synth_windows_gets_only_units_the_corpus_lacks(teacher, demo):
    (wave, target, mask), (w2, t2, m2) = _relabel(teacher, demo, OnlineTeacherSpec(synth=0.5), 2, 4, 2)
    assert torch.equal(w2, wave) and torch.equal(t2[:2], target[:2]) and torch.equal(t2[6:], target[6:])
    lacks = torch.tensor([bool(s.teacher) and not s.objective for s in SPECS])
    assert {s.name for s, x in zip(SPECS, lacks, strict=True) if x} == {"rock", "electronic", "ambient"}
    assert torch.allclose(t2[2:6][:, lacks], teacher(wave[2:6])[:, lacks])
    assert torch.all(m2[2:6][:, lacks] == 0.5)
    # objective units (piano, drums, fast: also distilled) keep the synthetic corpus's hard labels
    assert torch.equal(t2[2:6][:, ~lacks], target[2:6][:, ~lacks])
    assert torch.equal(m2[2:6][:, ~lacks], mask[2:6][:, ~lacks])


def test_relabel_real_labels_every_real_window_and_nothing_is_mixed(teacher, demo):
    (wave, target, mask), (w2, t2, m2) = _relabel(
        teacher, demo, OnlineTeacherSpec(relabel_real=True), 3, 1, 1
    )
    covered = teacher.covered
    assert torch.equal(w2, wave) and torch.equal(m2, mask)
    assert torch.allclose(t2[:3][:, covered], teacher(wave[:3])[:, covered])
    assert torch.equal(t2[3:], target[3:])


def test_mix_in_mixes_at_the_drawn_ratio():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(400, 1000)
    bank = AudioBank.from_arrays(
        [np.random.default_rng(1).standard_normal(5000).astype(np.float32)], 16000, 1000
    )
    mixed, on, other = mix_in(x, bank, 0.5, (6.0, 6.0), gen)
    assert other.shape == (400,) and int(other.max()) == 0  # the bank's one track
    assert 0.4 < float(on.mean()) < 0.6
    assert torch.equal(mixed[on[:, 0] == 0], x[on[:, 0] == 0])
    bg = mixed[on[:, 0] == 1] - x[on[:, 0] == 1]
    ratio_db = 20 * torch.log10(x[on[:, 0] == 1].pow(2).mean(1).sqrt() / bg.pow(2).mean(1).sqrt())
    assert torch.allclose(ratio_db, torch.full_like(ratio_db, 6.0), atol=1e-3)


def test_recipe_keeps_the_online_teacher_off_unless_asked():
    assert not OnlineTeacherSpec().enabled
    assert OnlineTeacherSpec(mix_p=0.3).enabled and OnlineTeacherSpec(synth=0.2).enabled
    with pytest.raises(ValueError):
        OnlineTeacher(SPECS, 47000)  # shorter than musicnn's 187 frames


def _source(name: str, clips: list[np.ndarray]):
    from training.multitask.data import WindowSource

    n = len(clips)
    return WindowSource(
        name,
        AudioBank.from_arrays(clips, 16000, WINDOW),
        torch.arange(n),
        torch.full((n,), -1),
        torch.zeros(n, len(SPECS)),
        torch.ones(n, len(SPECS)),
    )


def _train_two_steps(demo, out, batch_size: int, twin_bank=None, **recipe_fields) -> None:
    """pipeline.train, two steps of a tiny model on demo crops (real, synthetic, non-music sources);
    ``twin_bank``: the synthetic clip as another source plays it."""
    from training.loop import LoopSpec
    from training.multitask.pipeline import ModelCfg, MultitaskRecipe, train

    clips = [demo[i * 16000 * 4 : (i + 1) * 16000 * 4] for i in range(3)]
    loop = LoopSpec(steps=2, batch_size=batch_size, warmup_steps=1, ckpt_every=0, log_every=1)
    recipe = MultitaskRecipe(
        device="cpu",
        init_from="",
        model=ModelCfg(width=4, blocks=(1, 1), embed_dim=16),
        **{"loop": loop, **recipe_fields},
    )
    sources = [_source("real", clips[:2]), _source("synth", clips[2:]), _source("nm", clips[2:])]
    train(recipe, SPECS, sources, out, progress=False, twin_bank=twin_bank)


def test_pitch_shifted_synthetic_windows_train_no_tempo_unit(demo, tmp_path, monkeypatch):
    """synth_pitch: the shifted synthetic windows' tempo units are out of the loss (a shift moves
    the tempo), every other label of theirs and every unshifted window's stays in."""
    from training.multitask import pipeline
    from training.multitask.pipeline import SynthPitch

    masks = []
    loss = pipeline.masked_group_bce

    def loss_spy(logits, target, mask, *rest):
        masks.append(mask.clone())
        return loss(logits, target, mask, *rest)

    monkeypatch.setattr(pipeline, "masked_group_bce", loss_spy)
    _train_two_steps(demo, tmp_path, batch_size=10, synth_pitch=SynthPitch(p=1.0, semitones=2.0))
    tempo = torch.tensor([s.group == "tempo" for s in SPECS])
    assert tempo.any() and len(masks) == 2
    for mask in masks:  # 10 windows: 5 real, 3 synthetic (all shifted at p 1), 2 non-music
        assert (mask[5:8][:, tempo] == 0).all() and (mask[5:8][:, ~tempo] == 1).all()
        assert (mask[:5] == 1).all() and (mask[8:] == 1).all()


def test_training_steps_run_the_teacher_on_the_batch(demo, tmp_path, monkeypatch):
    """pipeline.train with ``online``, ``synth_channel`` and ``real_channel`` on: every step mixes and
    degrades its synthetic rows, hands its real and synthetic rows to the teacher, and only then
    degrades its real rows (the teachers label the clean audio the student hears degraded)."""
    from training.augment import ChannelSpec

    calls = []
    relabel = OnlineTeacher.relabel

    events = []

    def spy(self, spec, wave, target, mask, n_real, n_synth, bank, gen):
        calls.append((n_real, n_synth, len(wave)))
        events.append("teacher")
        return relabel(self, spec, wave, target, mask, n_real, n_synth, bank, gen)

    monkeypatch.setattr(OnlineTeacher, "relabel", spy)
    from training.multitask import data as mt_data

    mixes = []
    mix_clips = mt_data.mix_clips

    def mix_spy(wave, target, mask, specs, rows, source, p, snr_db, gen):
        mixes.append((rows.start, rows.stop, source.name, p))
        return mix_clips(wave, target, mask, specs, rows, source, p, snr_db, gen)

    monkeypatch.setattr(mt_data, "mix_clips", mix_spy)
    from training.multitask import pipeline

    degraded = []
    degrade = pipeline.degrade_channel

    def degrade_spy(x, spec, sample_rate, gen):
        degraded.append((x.shape[0], sample_rate))
        events.append(f"degrade {x.shape[0]}")
        return degrade(x, spec, sample_rate, gen)

    monkeypatch.setattr(pipeline, "degrade_channel", degrade_spy)

    _train_two_steps(
        demo,
        tmp_path,
        batch_size=8,
        online=OnlineTeacherSpec(mix_p=1.0, synth=0.5, synth_mix_p=0.5),
        synth_channel=ChannelSpec(reverb_p=0.5),
        real_channel=ChannelSpec(highpass_p=0.5, lowpass_p=0.5),
    )
    # the recipe's mix of 8 windows: 50 % real, 30 % synthetic, 20 % non-music, rounded down,
    # the remainder to the largest share (real)
    assert calls == [(5, 2, 8), (5, 2, 8)]
    assert mixes == [(5, 7, "synth", 0.5)] * 2  # the synthetic rows, mixed before the teachers label them
    assert degraded == [(2, 16000), (5, 16000)] * 2  # the synthetic rows, then the real ones
    assert events == ["degrade 2", "teacher", "degrade 5"] * 2  # real rows after the teacher heard them


def test_mixed_synthetic_clips_get_the_union_of_their_instruments():
    from training.multitask.data import Corpus, clip_source, mix_clips

    rng = np.random.default_rng(3)
    # as the synthetic corpus tags them: "no_drums" on every clip without drums
    tags = [
        {"piano", "drums", "fast"},
        {"violin", "slow", "no_drums"},
        {"piano", "loud", "no_drums"},
        {"bass", "no_drums"},
    ]
    corpus = Corpus(
        "s",
        [f"c{i}" for i in range(4)],
        [rng.standard_normal(40000).astype(np.float32) for _ in tags],
        tags,
        {},
    )
    src = clip_source(SPECS, corpus, 16000, music=True)
    names = [s.name for s in SPECS]
    n_real, n_synth = 2, 6
    rows = slice(n_real, n_real + n_synth)
    first = torch.from_numpy(rng.integers(0, 4, n_synth))
    wave = torch.from_numpy(rng.standard_normal((n_real + n_synth + 1, 16000)).astype(np.float32))
    target = torch.cat([torch.rand(n_real, len(SPECS)), src.target[first], torch.zeros(1, len(SPECS))])
    mask = torch.cat([torch.ones(n_real, len(SPECS)), src.mask[first], torch.ones(1, len(SPECS))])
    gen = torch.Generator().manual_seed(5)
    w2, t2, m2 = mix_clips(wave, target, mask, SPECS, rows, src, 1.0, (0.0, 9.0), gen)
    # the same draws again tell which clip each background came from
    _, _, other = mix_in(wave[rows], src.bank, 1.0, (0.0, 9.0), torch.Generator().manual_seed(5))
    assert not torch.equal(w2[rows], wave[rows])
    for r in range(n_synth):
        a, b = tags[int(first[r])], tags[int(other[r])]
        got = {
            n
            for n, v, m in zip(names, t2[n_real + r].tolist(), m2[n_real + r].tolist(), strict=True)
            if v > 0.5 and m > 0
        }
        present = {
            n for n in (a | b) if n in names and n not in ("fast", "slow", "loud", "quiet", "no_drums")
        }
        no_drums = {"no_drums"} if "drums" not in a | b else set()
        assert got == present | no_drums | {"music"}, (a, b, got)
        for unit in ("fast", "slow", "loud", "quiet"):
            if unit in names:
                assert m2[n_real + r, names.index(unit)] == 0  # two clips: no one tempo or loudness
    # real rows and the rows after the synthetic ones are untouched
    for x, y in ((w2, wave), (t2, target), (m2, mask)):
        assert torch.equal(x[:n_real], y[:n_real]) and torch.equal(x[-1:], y[-1:])
    # p = 0: nothing changes
    same = mix_clips(wave, target, mask, SPECS, rows, src, 0.0, (0.0, 9.0), gen)
    assert all(torch.equal(x, y) for x, y in zip(same, (wave, target, mask), strict=True))


def test_channel_degradations_do_what_they_say():
    from training.augment import ChannelSpec, degrade_channel

    sr, n = 16000, 16000
    rng = np.random.default_rng(4)
    x = torch.from_numpy(rng.standard_normal((6, n)).astype(np.float32)) * 0.1
    gen = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    assert torch.equal(degrade_channel(x, ChannelSpec(), sr, gen()), x)  # all off: unchanged

    def band_energy(y, lo, hi):
        spec = torch.fft.rfft(y).abs().square()
        f = torch.fft.rfftfreq(y.shape[1], 1 / sr)
        return spec[:, (f >= lo) & (f < hi)].sum(dim=1)

    low = degrade_channel(x, ChannelSpec(lowpass_p=1.0, lowpass_hz=(2000.0, 2000.0)), sr, gen())
    # white noise has equal energy per band; at twice the corner the roll-off is 1 / 17 in power
    ratio = band_energy(low, 3900, 4100) / band_energy(low, 400, 600)
    assert torch.all((ratio > 0.04) & (ratio < 0.08)), ratio
    high = degrade_channel(x, ChannelSpec(highpass_p=1.0, highpass_hz=(400.0, 400.0)), sr, gen())
    # the mirror image of the low-pass: power gain 1 / (1 + (corner / f)^4), about 1 / 17 at half the corner
    f = torch.arange(150.0, 250.0)
    expected = (1 / (1 + (400 / f) ** 4)).mean()
    ratio = band_energy(high, 150, 250) / band_energy(high, 1550, 1650)
    assert torch.all((ratio > 0.75 * expected) & (ratio < 1.25 * expected)), (ratio, expected)
    assert torch.all(band_energy(high, 0, 50) < 1e-3 * band_energy(high, 1500, 1550))
    assert torch.allclose(high.pow(2).mean(1).sqrt(), x.pow(2).mean(1).sqrt(), rtol=1e-4)
    # a click in a room: energy long after it; the window's RMS is kept
    click = torch.zeros(2, n)
    click[:, 100] = 1.0
    room = degrade_channel(click, ChannelSpec(reverb_p=1.0, reverb_wet=(0.7, 0.7)), sr, gen())
    assert torch.all(room[:, 4000:].abs().amax(dim=1) > 0)
    assert torch.allclose(room.pow(2).mean(1).sqrt(), click.pow(2).mean(1).sqrt(), rtol=1e-4)
    # overdrive: the peaks flatten (crest factor falls), the RMS is kept
    hot = degrade_channel(x, ChannelSpec(clip_p=1.0, clip_drive_db=(18.0, 18.0)), sr, gen())
    crest = lambda y: y.abs().amax(1) / y.pow(2).mean(1).sqrt()  # noqa: E731
    assert torch.all(crest(hot) < 0.6 * crest(x))
    assert torch.allclose(hot.pow(2).mean(1).sqrt(), x.pow(2).mean(1).sqrt(), rtol=1e-4)
    # a lo-fi converter: few levels, each held; RMS kept
    lofi = ChannelSpec(crush_p=1.0, crush_bits=(3.0, 3.0), crush_hold=(4, 4))
    crushed = degrade_channel(x, lofi, sr, gen())
    assert all(len(torch.unique(row)) <= 2 * 4 + 1 for row in crushed)  # 3 bits: 4 levels a side, and 0
    steps = torch.nonzero(crushed[:, 1:] != crushed[:, :-1])[:, 1] + 1  # where a new value starts
    assert len(steps) > n and torch.all(steps % 4 == 0)  # sample-and-hold over 4 samples
    assert torch.allclose(crushed.pow(2).mean(1).sqrt(), x.pow(2).mean(1).sqrt(), rtol=1e-4)
    for bad in ({"crush_hold": (0, 2)}, {"crush_bits": (8.0, 4.0)}):  # a hold of 0 or a range upside down
        with pytest.raises(ValueError, match="from 1 up"):
            ChannelSpec(**bad)
    # each degradation applies to about its share of the windows
    many = torch.from_numpy(rng.standard_normal((400, 2000)).astype(np.float32))
    half = degrade_channel(many, ChannelSpec(clip_p=0.5), sr, gen())
    changed = (half - many).abs().amax(dim=1) > 1e-3
    assert 0.4 < float(changed.float().mean()) < 0.6


def test_binary_js_is_zero_for_equal_views_and_bounded():
    from training.multitask.losses import binary_js

    a = torch.tensor([[-3.0, 0.0, 4.0], [1.0, -1.0, 2.0]])
    ones = torch.ones_like(a)
    assert float(binary_js(a, a, ones)) == pytest.approx(0.0, abs=1e-7)
    far = binary_js(torch.full((1, 1), -30.0), torch.full((1, 1), 30.0), torch.ones(1, 1))
    assert float(far) == pytest.approx(np.log(2), rel=1e-4)  # two certain, opposite views: ln 2
    b = a.clone()
    b[0, 0] = 3.0  # one pair differs: the mean is over the masked pairs only
    only = torch.zeros_like(a)
    only[0, 0] = 1.0
    assert float(binary_js(a, b, only)) == pytest.approx(float(binary_js(a[:1, :1], b[:1, :1], only[:1, :1])))
    assert float(binary_js(a, b, only)) > 0 and float(binary_js(a, b, ones - only)) == pytest.approx(
        0.0, abs=1e-7
    )
    assert float(binary_js(a, b, torch.zeros_like(a))) == 0.0


def _record(monkeypatch, module, name: str) -> list:
    """Wrap ``module.name`` so that each call's (arguments, result), tensors detached and copied,
    goes to the list returned; the call itself is unchanged."""
    calls, real = [], getattr(module, name)

    def keep(x):
        return x.detach().clone() if isinstance(x, torch.Tensor) else x

    def spy(*args):
        out = real(*args)
        calls.append(([keep(a) for a in args], keep(out)))
        return out

    monkeypatch.setattr(module, name, spy)
    return calls


def test_consistency_adds_a_second_view_of_the_synthetic_windows(demo, tmp_path, monkeypatch):
    """consistency.weight > 0: each step appends the synthetic rows again, through their own draw of
    consistency.channel from the clean (undegraded) windows, with their labels; the loss adds
    weight × the JS between the two views' outputs."""
    from training.augment import ChannelSpec
    from training.multitask import pipeline
    from training.multitask.pipeline import ChannelConsistency

    seen = _record(monkeypatch, pipeline, "masked_group_bce")
    inputs = _record(monkeypatch, pipeline, "degrade_channel")
    js_seen = _record(monkeypatch, pipeline, "binary_js")
    second = ChannelSpec(crush_p=1.0, crush_bits=(3.0, 3.0))
    _train_two_steps(
        demo,
        tmp_path,
        batch_size=10,
        synth_channel=ChannelSpec(highpass_p=1.0),
        consistency=ChannelConsistency(weight=5.0, channel=second),
    )
    assert len(seen) == 2 and len(js_seen) == 2
    for ((_, target, mask, *_), _), ((a, b, _), value) in zip(seen, js_seen, strict=True):
        # 10 windows: 5 real, 3 synthetic, 2 non-music, then the 3 synthetic again
        assert (
            target.shape[0] == 13
            and torch.equal(target[10:], target[5:8])
            and torch.equal(mask[10:], mask[5:8])
        )
        assert a.shape == b.shape == (3, len(SPECS)) and 0 < float(value) < np.log(2)
    # per step: the recipe's channel on the synthetic rows, then the second view's from the same clean rows
    assert [args[1] for args, _ in inputs] == [ChannelSpec(highpass_p=1.0), second] * 2
    for k in (0, 2):
        assert torch.equal(inputs[k][0][0], inputs[k + 1][0][0])


def test_consistency_needs_a_channel():
    from training.multitask.pipeline import ChannelConsistency, MultitaskRecipe

    with pytest.raises(ValueError, match="needs consistency.twin or a consistency.channel"):
        ChannelConsistency(weight=1.0)
    assert ChannelConsistency().weight == 0.0
    with pytest.raises(ValueError, match="needs data.synth_twin"):
        MultitaskRecipe(consistency=ChannelConsistency(weight=1.0, twin=True))


def test_consistency_twin_views_are_the_other_sources_crops(demo, tmp_path, monkeypatch):
    """consistency.twin: the synthetic rows' second view is the same crop of the twin rendering (here
    the clip negated), then through consistency.channel; the real rows keep theirs."""
    from training.augment import ChannelSpec
    from training.multitask import pipeline
    from training.multitask.pipeline import ChannelConsistency, DataPaths

    inputs = _record(monkeypatch, pipeline, "degrade_channel")
    js_seen = _record(monkeypatch, pipeline, "binary_js")
    synth = demo[2 * 16000 * 4 : 3 * 16000 * 4]
    _train_two_steps(
        demo,
        tmp_path,
        batch_size=10,
        twin_bank=AudioBank.from_arrays([-synth], 16000, WINDOW),
        data=DataPaths(synth_twin="the twin clips"),
        synth_channel=ChannelSpec(lowpass_p=1.0),
        real_channel=ChannelSpec(highpass_p=1.0),
        consistency=ChannelConsistency(weight=5.0, channel=ChannelSpec(crush_p=1.0), real=True, twin=True),
    )
    assert [(a.shape, b.shape) for (a, b, _), _ in js_seen] == [((8, len(SPECS)), (8, len(SPECS)))] * 2
    for step in range(2):  # per step: synthetic channel, real channel, then the second view
        synth_in, real_in, second_in = (args[0] for args, _ in inputs[3 * step : 3 * step + 3])
        assert torch.equal(second_in[:5], real_in) and torch.equal(second_in[5:], -synth_in)
        assert synth_in.abs().max() > 0  # the test can fail


def test_consistency_twin_without_its_clips_is_refused(demo, tmp_path):
    from training.multitask.pipeline import ChannelConsistency, DataPaths, MultitaskError

    with pytest.raises(MultitaskError, match="no twin clips"):
        _train_two_steps(
            demo,
            tmp_path,
            batch_size=10,
            data=DataPaths(synth_twin="somewhere"),
            consistency=ChannelConsistency(weight=5.0, twin=True),
        )


def test_consistency_on_real_windows_starts_from_what_the_teachers_heard(demo, tmp_path, monkeypatch):
    """consistency.real: the real rows get a second view too, drawn from their audio before
    real_channel (what the teachers labelled), with their targets; the term spans both row sets."""
    from training.augment import ChannelSpec
    from training.multitask import pipeline
    from training.multitask.pipeline import ChannelConsistency

    inputs = _record(monkeypatch, pipeline, "degrade_channel")
    js_seen = _record(monkeypatch, pipeline, "binary_js")
    _train_two_steps(
        demo,
        tmp_path,
        batch_size=10,
        synth_channel=ChannelSpec(lowpass_p=1.0),
        real_channel=ChannelSpec(highpass_p=1.0),
        consistency=ChannelConsistency(weight=5.0, channel=ChannelSpec(crush_p=1.0), real=True),
    )
    shapes = [(a.shape, b.shape) for (a, b, _), _ in js_seen]
    assert shapes == [((8, len(SPECS)), (8, len(SPECS)))] * 2  # 5 real + 3 synthetic rows, twice
    for step in range(2):  # per step: synthetic channel, real channel, then the second view
        synth_in, real_in, second_in = (args[0] for args, _ in inputs[3 * step : 3 * step + 3])
        assert torch.equal(second_in[:5], real_in) and torch.equal(second_in[5:], synth_in)


def _teacher_bundle(path, tags):
    from engines.frontend import FrontEndSpec
    from tests.conftest import make_random_bundle

    return make_random_bundle(path, tags=tags, seed=3, width=8, window_frames=FrontEndSpec().window_frames)


def test_distill_pulls_the_student_toward_a_teacher_models_outputs(demo, tmp_path, monkeypatch):
    """distill.weight > 0: every row of every step (both views) is scored against the teacher
    model's outputs on the same input; with the labels' weights at 0 the student moves toward it."""
    from training.augment import ChannelSpec
    from training.loop import LoopSpec
    from training.multitask import pipeline
    from training.multitask.pipeline import ChannelConsistency, ModelDistill

    teacher = _teacher_bundle(tmp_path / "teacher", [s.name for s in SPECS])
    seen = _record(monkeypatch, pipeline, "soft_bce")
    _train_two_steps(
        demo,
        tmp_path / "run",
        batch_size=10,
        consistency=ChannelConsistency(weight=1.0, channel=ChannelSpec(crush_p=1.0)),
        distill=ModelDistill(bundle=str(teacher.path), weight=2.0),
    )
    assert len(seen) == 2
    for (student, taught), value in seen:
        assert student.shape == taught.shape == (13, len(SPECS))  # 10 rows + 3 synthetic second views
        assert not torch.allclose(student, taught) and value > 0
    # skip_groups: those groups' units are out of the term
    seen.clear()
    _train_two_steps(
        demo,
        tmp_path / "run_skip",
        batch_size=10,
        distill=ModelDistill(bundle=str(teacher.path), weight=2.0, skip_groups=("tempo", "genre")),
    )
    kept = [s.group not in ("tempo", "genre") for s in SPECS]
    assert 0 < sum(kept) < len(SPECS) and all(a.shape == (10, sum(kept)) for (a, _), _ in seen)
    # only the teacher's term: the student's outputs come toward the teacher's
    seen.clear()
    _train_two_steps(
        demo,
        tmp_path / "run2",
        batch_size=10,
        group_weights={g: 0.0 for g in {s.group for s in SPECS}},
        distill=ModelDistill(bundle=str(teacher.path), weight=1.0),
        loop=LoopSpec(steps=40, batch_size=10, warmup_steps=1, ckpt_every=0, log_every=1, lr=3e-3),
    )
    gaps = [float((torch.sigmoid(a) - torch.sigmoid(b)).abs().mean()) for (a, b), _ in seen]
    assert len(gaps) == 40 and np.mean(gaps[-5:]) < 0.7 * np.mean(gaps[:5]), gaps


def test_distill_refuses_a_teacher_of_other_units(demo, tmp_path):
    from training.multitask.pipeline import ModelDistill, MultitaskError, MultitaskRecipe

    with pytest.raises(ValueError, match="needs distill.bundle"):
        MultitaskRecipe(distill=ModelDistill(weight=1.0))
    other = _teacher_bundle(tmp_path / "other", [s.name for s in SPECS][::-1])
    with pytest.raises(MultitaskError, match="not this run's units in order"):
        _train_two_steps(
            demo, tmp_path / "run", batch_size=10, distill=ModelDistill(bundle=str(other.path), weight=1.0)
        )
    teacher = _teacher_bundle(tmp_path / "teacher", [s.name for s in SPECS])
    with pytest.raises(MultitaskError, match="no group 'singing'"):
        _train_two_steps(
            demo, tmp_path / "run", batch_size=10,
            distill=ModelDistill(bundle=str(teacher.path), weight=1.0, skip_groups=("singing",)),
        )  # fmt: skip
    every = tuple({s.group for s in SPECS})
    with pytest.raises(MultitaskError, match="leaves no unit"):
        _train_two_steps(
            demo, tmp_path / "run", batch_size=10,
            distill=ModelDistill(bundle=str(teacher.path), weight=1.0, skip_groups=every),
        )  # fmt: skip
    with pytest.raises(MultitaskError, match="distill.bundle"):
        _train_two_steps(
            demo,
            tmp_path / "run",
            batch_size=10,
            distill=ModelDistill(bundle=str(tmp_path / "nope"), weight=1.0),
        )
    # a teacher of another window teaches on the run's windows; one of another log-mel is refused
    from engines.bundle import save_bundle
    from engines.frontend import FrontEndSpec
    from tests.conftest import make_random_bundle

    short = make_random_bundle(tmp_path / "short", tags=[s.name for s in SPECS], seed=3, window_frames=64)
    _train_two_steps(
        demo, tmp_path / "run_short", batch_size=10, distill=ModelDistill(bundle=str(short.path), weight=1.0)
    )
    narrow = save_bundle(
        tmp_path / "narrow",
        short.build_model(),
        short.manifest.model_copy(update={"frontend": FrontEndSpec(f_max=4000.0), "manifest_sha256": ""}),
    )
    with pytest.raises(MultitaskError, match="another log-mel front end"):
        _train_two_steps(
            demo,
            tmp_path / "run_narrow",
            batch_size=10,
            distill=ModelDistill(bundle=str(narrow.path), weight=1.0),
        )
