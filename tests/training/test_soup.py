"""``python -m training.multitask.soup``: the mean of runs' weights, refused across seeds or vocabularies."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file, save_file

from engines.model import ModelSpec, ResNetTagger
from training.multitask.soup import main


def _run_folder(path, seed: int, torch_seed: int, vocab: list[str]):
    """A result folder as gpu_run.sh brings back, with a small real model's (trained-looking) weights."""
    torch.manual_seed(torch_seed)
    model = ResNetTagger(ModelSpec(width=4, blocks=(1, 1), embed_dim=8, n_tags=len(vocab)))
    model.train()
    model(torch.randn(3, 96, 64))  # moves the BatchNorm running statistics and counts
    (path / "bundle").mkdir(parents=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, path / "bundle" / "weights.safetensors")
    (path / "vocab.json").write_text(json.dumps({"tags": vocab}))
    (path / "result.json").write_text(
        json.dumps({"recipe": {"name": path.name, "seed": seed, "init_from": "/b"}})
    )
    return state


def test_soup_is_the_elementwise_mean_and_keeps_counts(tmp_path, capsys):
    a = _run_folder(tmp_path / "a", 0, 1, ["x", "y"])
    b = _run_folder(tmp_path / "b", 0, 2, ["x", "y"])
    c = _run_folder(tmp_path / "c", 0, 3, ["x", "y"])
    assert main([str(tmp_path / "soup"), *(str(tmp_path / n) for n in "abc")]) == 0
    soup = load_file(tmp_path / "soup" / "bundle" / "weights.safetensors")
    assert soup.keys() == a.keys()
    for k, v in soup.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, (a[k] + b[k] + c[k]) / 3, rtol=0, atol=1e-6)
        else:
            assert torch.equal(v, a[k])  # num_batches_tracked: a count, not averaged
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the ingredients really differ
    assert json.loads((tmp_path / "soup" / "vocab.json").read_text()) == {"tags": ["x", "y"]}
    names = [i["name"] for i in json.loads((tmp_path / "soup" / "result.json").read_text())["soup_of"]]
    assert names == ["a", "b", "c"] and "the mean of 3 runs" in capsys.readouterr().out


def test_soup_refuses_other_seeds_vocabularies_and_missing_files(tmp_path, capsys):
    _run_folder(tmp_path / "a", 0, 1, ["x", "y"])
    _run_folder(tmp_path / "s1", 1, 2, ["x", "y"])
    _run_folder(tmp_path / "v", 0, 3, ["x", "z"])
    (tmp_path / "empty").mkdir()
    for other, said in [
        ("s1", "seed 1"),
        ("v", "another vocabulary"),
        ("empty", "no selected.safetensors or bundle/weights.safetensors or last.safetensors"),
    ]:
        assert main([str(tmp_path / "out"), str(tmp_path / "a"), str(tmp_path / other)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and said in err and len(err.strip().splitlines()) == 1
    assert main([str(tmp_path / "out"), str(tmp_path / "a")]) == 2
    assert not (tmp_path / "out").exists()  # nothing written on a refusal


def test_soup_reads_results_as_gpu_run_now_brings_them(tmp_path, capsys):
    """selected.safetensors before last.safetensors, the vocabulary from result.json."""
    a = _run_folder(tmp_path / "a", 0, 1, ["x", "y"])
    b = _run_folder(tmp_path / "b", 0, 2, ["x", "y"])
    other = _run_folder(tmp_path / "other", 0, 3, ["x", "y"])
    new = tmp_path / "new"
    new.mkdir()
    save_file(b, new / "selected.safetensors")
    save_file(other, new / "last.safetensors")  # not the weights the valid split picked
    recipe = json.loads((tmp_path / "b" / "result.json").read_text())["recipe"]
    (new / "result.json").write_text(json.dumps({"recipe": recipe, "vocab": {"tags": ["x", "y"]}}))
    assert main([str(tmp_path / "soup"), str(tmp_path / "a"), str(new)]) == 0
    soup = load_file(tmp_path / "soup" / "bundle" / "weights.safetensors")
    for k, v in soup.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, (a[k] + b[k]) / 2, rtol=0, atol=1e-6)
    (new / "result.json").write_text(json.dumps({"recipe": recipe}))  # no vocabulary anywhere
    assert main([str(tmp_path / "soup2"), str(tmp_path / "a"), str(new)]) == 2
    assert "no vocab.json and no vocabulary" in capsys.readouterr().err
