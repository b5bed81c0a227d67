"""``gpu_run.sh collect``: a run's weights come back within what a device call returns (8 files of
at most 16 MiB, 64 MiB in all), a wide model's in parts that join to the same weights; and
``stage`` of carried training labels (``prepare.sh train-labels``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load, save_file

from engines.model import ModelSpec, ResNetTagger

ROOT = Path(__file__).resolve().parents[2]


def _state(width: int, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {
        k: v.contiguous() for k, v in ResNetTagger(ModelSpec(width=width, n_tags=37)).state_dict().items()
    }


def _collect(tmp_path: Path, width: int) -> tuple[Path, subprocess.CompletedProcess, dict, dict]:
    run, out = tmp_path / "run", tmp_path / "out"
    (run / "train").mkdir(parents=True)
    out.mkdir()
    last, selected = _state(width, 0), _state(width, 1)
    torch.save({"module": last}, run / "train" / "ckpt.pt")
    save_file(selected, run / "model.safetensors")
    (run / "result.json").write_text("{}")
    (run / "train" / "history.json").write_text("[]")
    (out / "train.log").write_text("log\n")  # the run's log is already there
    env = {**os.environ, "MT_RUN": str(run), "OUT": str(out), "MT_PY": sys.executable}
    p = subprocess.run(["bash", "training/multitask/gpu_run.sh", "collect"], cwd=ROOT, env=env,
                       capture_output=True, text=True)  # fmt: skip
    return out, p, last, selected


def _joined(out: Path, name: str) -> dict[str, torch.Tensor]:
    parts = sorted(out.glob(f"{name}.part*"))  # as eval_original.sh joins them
    return load(b"".join(p.read_bytes() for p in parts) if parts else (out / name).read_bytes())


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _fits_a_call(out: Path) -> bool:
    files = [f for f in out.iterdir() if f.is_file()]
    sizes = [f.stat().st_size for f in files]
    return len(files) <= 8 and max(sizes) <= 16 * 2**20 and sum(sizes) <= 64 * 2**20


def test_width_48_comes_back_in_parts_both_steps(tmp_path: Path):
    out, p, last, selected = _collect(tmp_path, 48)
    assert p.returncode == 0, p.stderr
    assert (
        len(list(out.glob("selected.safetensors.part*"))) == 2 and not (out / "selected.safetensors").exists()
    )
    assert _same(_joined(out, "selected.safetensors"), selected) and _same(
        _joined(out, "last.safetensors"), last
    )
    assert not _same(selected, last) and _fits_a_call(out)


def test_width_64_keeps_the_selected_step_and_says_what_it_left_out(tmp_path: Path):
    out, p, _, selected = _collect(tmp_path, 64)
    assert p.returncode == 0, p.stderr
    assert _same(_joined(out, "selected.safetensors"), selected) and _fits_a_call(out)
    assert not list(out.glob("last.safetensors*")) and "collect: last.safetensors left out" in p.stdout


def test_width_32_comes_back_whole(tmp_path: Path):
    out, p, last, selected = _collect(tmp_path, 32)
    assert p.returncode == 0, p.stderr
    assert not list(out.glob("*.part*"))
    assert _same(_joined(out, "selected.safetensors"), selected) and _same(
        _joined(out, "last.safetensors"), last
    )


def test_train_labels_are_carried_and_staged_for_the_run(tmp_path: Path):
    """``prepare.sh train-labels F`` carries an earlier GPU "label real_train" file as mt_8;
    ``gpu_run.sh stage mt_8`` puts it where ``train`` copies labels into the run folder from."""
    import numpy as np

    labels = tmp_path / "labels_real_train.npz"
    np.savez(labels, track=np.arange(3), start=np.zeros(3, np.int64))
    carry, data = tmp_path / "work" / ".carry", tmp_path / "mtdata"
    env = {**os.environ, "CARRY": str(carry)}
    prepare = ["bash", "training/multitask/prepare.sh", "train-labels"]
    p = subprocess.run([*prepare, str(ROOT / "README.md")], cwd=ROOT, env=env, capture_output=True, text=True)
    assert p.returncode == 2 and "is not a labels_real_train.npz file" in p.stderr and not carry.exists()
    p = subprocess.run([*prepare, str(labels)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert (carry / "mt_8" / "labels" / labels.name).read_bytes() == labels.read_bytes()
    env = {**os.environ, "MT_DATA": str(data), "MT_SITE": str(tmp_path / "site")}
    p = subprocess.run(["bash", str(carry / "mt_8" / "gpu_run.sh"), "stage", "mt_8"], cwd=carry.parent, env=env,
                       capture_output=True, text=True)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert (data / "labels" / labels.name).read_bytes() == labels.read_bytes()


def test_calls_split_a_pack_too_large_for_one_call_and_train_with_this_checkouts_code(tmp_path: Path):
    """``prepare.sh calls`` plans device calls of at most 64 MiB each with the tracked tree: a pack
    larger than what a call leaves beside the tree travels as its files (``stage`` gathers them
    again), the copies of gpu_run.sh in each folder stay behind, mt_4 goes with the last call, and
    mt_4's code is made again from HEAD (a run never trains with an older pack's code)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    tree = sum((ROOT / f).stat().st_size for f in files.decode().split("\0") if f and (ROOT / f).is_file())
    room = 63 * 1048576 - tree
    carry = tmp_path / ".carry"
    pack = carry / "mt_3" / "packs" / "synth_train"
    pack.mkdir(parents=True)
    (carry / "mt_3" / "gpu_run.sh").write_text("#\n")
    for name, size in (("audio.bin.part00", room - 1048576), ("table.csv", 2 * 1048576)):
        with open(pack / name, "wb") as f:
            f.truncate(size)  # sparse: the plan counts apparent sizes, as the device's limit does
    (carry / "mt_4" / "packs").mkdir(parents=True)
    (carry / "mt_4" / "COMMIT").write_text("an older commit\n")
    p = subprocess.run(["bash", "training/multitask/prepare.sh", "calls"], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "CARRY": str(carry), "PY": sys.executable})  # fmt: skip
    assert p.returncode == 0, p.stderr
    calls = [line for line in p.stdout.splitlines() if line.startswith("call ")]
    carried = [line.split("carry ", 1)[1] for line in calls]
    assert any("'.carry/mt_3/packs/synth_train/audio.bin.part00'" in c for c in carried), p.stdout
    assert any("'.carry/mt_3/packs/synth_train/table.csv'" in c for c in carried), p.stdout
    lines = p.stdout.splitlines()
    assert "'.carry/mt_4'" in carried[-1] and "then label / train" in lines[lines.index(calls[-1]) + 1]
    assert "gpu_run.sh'" not in p.stdout and all(float(c.split()[2]) <= 64 for c in calls)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert (carry / "mt_4" / "COMMIT").read_text() == head.stdout
    assert (carry / "mt_4" / "code" / "training" / "multitask" / "pipeline.py").is_file()
