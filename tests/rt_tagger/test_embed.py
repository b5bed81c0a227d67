"""``rt-tagger embed`` with the shipped model on real audio, and the ``--embedding`` message field.

What is proved: both output formats are readable with their plain libraries (numpy without pickle,
safetensors) and hold the same rows; the rows do not depend on the block size the file is decoded
in; each row is the model's own penultimate layer for its window (the bundle's head applied to it
gives the window's tag probabilities from the streaming path); and ``stream - --embedding`` sends
the same vectors in its messages.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from rt_tagger.bundled_model import load_bundle
from tests.rt_tagger.conftest import run_cli


@pytest.fixture(scope="module")
def shipped():
    return load_bundle(None)


@pytest.fixture(scope="module")
def two_files(short_wav, demo_audio, tmp_path_factory):
    """The 6 s clip and a 2 s piece (shorter than one window: padded to one)."""
    import soundfile as sf

    x, sr = demo_audio
    short = tmp_path_factory.mktemp("embed") / "two_seconds.wav"
    sf.write(str(short), x[10 * sr : 12 * sr], sr, subtype="PCM_16")
    return [short_wav, short]


@pytest.fixture(scope="module")
def npy_rows(two_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("embed") / "e.npy"
    p = run_cli("embed", *map(str, two_files), "--out", str(out), "--block-size", "300")
    assert p.returncode == 0, p.stderr_text
    return np.load(out, allow_pickle=False)


def test_npy_rows(npy_rows, two_files, shipped):
    dim = shipped.manifest.model.embed_dim
    assert npy_rows.dtype.names == ("file", "start_s", "end_s", "embedding")
    assert npy_rows["embedding"].shape[1:] == (dim,) and npy_rows["embedding"].dtype == np.float32
    assert np.isfinite(npy_rows["embedding"]).all()
    assert list(dict.fromkeys(npy_rows["file"])) == [str(f) for f in two_files]
    first = npy_rows[npy_rows["file"] == str(two_files[0])]
    assert len(first) > 3 and (npy_rows["file"] == str(two_files[1])).sum() == 1
    np.testing.assert_allclose(first["end_s"] - first["start_s"], shipped.frontend.window_seconds, atol=1e-3)
    assert np.all(np.diff(first["start_s"]) > 0)
    assert np.ptp(first["embedding"], axis=0).max() > 0  # the windows differ, so do their rows


def test_safetensors_equals_npy_across_block_sizes(npy_rows, two_files, shipped, tmp_path):
    from safetensors import safe_open
    from safetensors.numpy import load_file

    out = tmp_path / "e.safetensors"
    p = run_cli("embed", *map(str, two_files), "--out", str(out), "--block-size", "4096")
    assert p.returncode == 0, p.stderr_text
    t = load_file(str(out))
    with safe_open(str(out), "np") as f:
        meta = f.metadata()
    assert json.loads(meta["files"]) == [str(f) for f in two_files]
    assert meta["weights_sha256"] == shipped.manifest.weights_sha256
    np.testing.assert_allclose(t["embeddings"], npy_rows["embedding"], atol=1e-4)  # 300 vs 4096 frames
    np.testing.assert_allclose(t["start_s"], npy_rows["start_s"])
    assert [json.loads(meta["files"])[i] for i in t["file_index"]] == list(npy_rows["file"])


def test_rows_are_the_models_embeddings(npy_rows, two_files, shipped):
    """The bundle's own head on each row gives that window's probabilities from `rt-tagger tag`."""
    import torch

    p = run_cli("tag", str(two_files[0]), "--per-window", "--json")
    assert p.returncode == 0, p.stderr_text
    windows = json.loads(p.stdout_text)["per_window"]
    rows = npy_rows[npy_rows["file"] == str(two_files[0])]
    assert [w["start_s"] for w in windows] == pytest.approx(list(rows["start_s"]), abs=1e-3)
    with torch.no_grad():
        probs = torch.sigmoid(shipped.build_model().head(torch.from_numpy(rows["embedding"]))).numpy()
    np.testing.assert_allclose(probs, [w["probabilities"] for w in windows], atol=1e-3)


def test_stream_embedding_field(npy_rows, two_files):
    import soundfile as sf

    pcm, sr = sf.read(str(two_files[0]), dtype="int16")
    p = run_cli(
        "stream", "-", "--rate", str(sr), "--no-publish", "--json", "--embedding", input=pcm.tobytes()
    )
    assert p.returncode == 0, p.stderr_text
    msgs = [json.loads(line) for line in p.stdout_text.splitlines() if line.startswith("{")]
    got = [m["embedding"] for m in msgs if m["kind"] == "tags"]
    rows = npy_rows[npy_rows["file"] == str(two_files[0])]
    np.testing.assert_allclose(got, rows["embedding"], atol=1e-4)


def test_unknown_output_format_is_one_line(short_wav, tmp_path):
    p = run_cli("embed", str(short_wav), "--out", str(tmp_path / "e.txt"))
    assert p.returncode == 2 and p.stderr_text.count("\n") == 1
    assert "unknown format '.txt'" in p.stderr_text
