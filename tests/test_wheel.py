"""The built wheel is complete: installed into a fresh venv, every command works from outside the checkout.

Builds the wheel from what a clone holds (git's files) without build isolation, installs it with
``--no-deps --no-index`` into a new venv that sees the project venv's packages through a ``.pth``
line (torch and the rest are not downloaded again; the project's editable install is not active
there), then runs ``demo --fast``, ``tag`` and ``train all --help`` from an empty folder.
"""

from __future__ import annotations

import os
import re
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.wheel

SHIPPED = [
    "rt_tagger/demo/demo.ogg",
    "rt_tagger/configs/runtime.toml",
    "training/configs/train_default.toml",
    "rt_tagger/default_model/manifest.json",
    "rt_tagger/default_model/weights.safetensors",
    "rt_tagger/default_model/compiled/tagger.fp32.opset18.onnx",
    "rt_tagger/schema/tag_message.schema.json",
    "rt_tagger/schema/ingest.schema.json",
]


def _run(cmd: list, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kw)
    assert p.returncode == 0, f"{cmd}: exit {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    return p


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> tuple[Path, Path]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout: the wheel is built from the files git tracks")
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    listed = _run(["git", "-C", ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard"]).stdout
    for rel in filter(None, listed.split("\0")):
        if os.path.lexists(ROOT / rel):
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel, follow_symlinks=False)
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            work / "dist",
            src,
        ]
    )
    (wheel,) = (work / "dist").glob("rt_tagger-*.whl")
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    purelib = _run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
    (Path(purelib.stdout.strip()) / "project_venv_packages.pth").write_text(
        "\n".join(site.getsitepackages()) + "\n"
    )
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            venv / "bin" / "python",
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            wheel,
        ]
    )
    return wheel, venv


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RT_TAGGER_") and k != "PYTHONPATH"}
    return env


def test_wheel_holds_what_commands_read(wheel_venv):
    wheel, _ = wheel_venv
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [f for f in SHIPPED if f not in names]
    assert not missing, missing
    assert not any(n.endswith(".key.json") or n.endswith(".plan") for n in names)  # local builds stay out


def test_installed_commands_run_outside_checkout(wheel_venv, tmp_path):
    _, venv = wheel_venv
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    where = _run(
        [venv / "bin" / "python", "-c", "import rt_tagger; print(rt_tagger.__file__)"],
        cwd=outside,
        env=_env(),
    )
    package = Path(where.stdout.strip()).parent
    assert package.is_relative_to(venv), where.stdout  # the wheel's copy, not the checkout
    shipped = sorted(p.name for p in (package / "default_model" / "compiled").iterdir())

    cli = venv / "bin" / "rt-tagger"
    demo = _run([cli, "demo", "--fast", "--endpoint", "tcp://127.0.0.1:*"], cwd=outside, env=_env())
    assert "messages published" in demo.stdout + demo.stderr
    whole = (demo.stdout + demo.stderr).split("whole clip:")[1].splitlines()[0]
    assert whole.strip() and not re.search(r"(^|\s)music \d", whole), whole  # the music gate is not a tag
    assert whole.strip().startswith("on: ") and " | top: " in whole, (
        whole
    )  # tags on over the clip, then scores
    shutil.copy(package / "demo" / "demo.ogg", outside / "clip.ogg")
    tag = _run([cli, "tag", "clip.ogg"], cwd=outside, env=_env())
    assert tag.stdout.startswith("clip.ogg: "), tag.stdout
    assert tag.stderr.strip() == "", tag.stderr
    train = _run([cli, "train", "all", "--help"], cwd=outside, env=_env())
    assert "--recipe" in train.stdout
    # the shipped ONNX graph and constants were used as they are: nothing exported or built
    assert sorted(p.name for p in (package / "default_model" / "compiled").iterdir()) == shipped
