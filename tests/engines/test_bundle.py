import json
from pathlib import Path

import numpy as np
import pytest

from engines.bundle import Bundle, BundleError
from engines.registry import open_backend
from tests.conftest import make_random_bundle


def test_roundtrip_and_inference(random_bundle):
    b = Bundle.load(random_bundle.path)
    with open_backend(b, "torch-cpu") as backend:
        mel = np.random.default_rng(0).normal(-40, 20, (3, *backend.input_shape)).astype(np.float32)
        out = backend.infer(mel)
    assert out.probabilities.shape == (3, len(b.tags))
    assert np.all((out.probabilities >= 0) & (out.probabilities <= 1))
    assert backend.last_inference_time > 0


def test_tampered_weights_refused(tmp_path):
    b = make_random_bundle(tmp_path / "b")
    with open(b.weights_path, "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(BundleError, match="sha256 mismatch"):
        Bundle.load(b.path)


def test_pickle_weights_refused(tmp_path):
    b = make_random_bundle(tmp_path / "b")
    m = json.loads((b.path / "manifest.json").read_text())
    m["weights_file"] = "weights.pt"
    (b.path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="safetensors"):
        Bundle.load(b.path)


def test_missing_bundle(tmp_path):
    with pytest.raises(BundleError, match="not found"):
        Bundle.load(tmp_path / "nope")


def test_refuses_overwrite(tmp_path, random_bundle):
    with pytest.raises(BundleError, match="overwrite"):
        make_random_bundle(random_bundle.path)


def _edit_manifest(bundle, edit) -> None:
    """Change the manifest on disk the way a person with a text editor would (digest untouched)."""
    m = json.loads((bundle.path / "manifest.json").read_text())
    edit(m)
    (bundle.path / "manifest.json").write_text(json.dumps(m, indent=2))


def test_renamed_tag_refused(tmp_path):
    b = make_random_bundle(tmp_path / "b")
    _edit_manifest(b, lambda m: m["tags"].__setitem__(0, "piccolo"))
    with pytest.raises(BundleError, match="manifest digest mismatch") as e:
        Bundle.load(b.path)
    assert "\n" not in str(e.value) and "edited or corrupted" in str(e.value)


@pytest.mark.parametrize("field", ["thresholds", "frontend", "hop_seconds", "provenance", "format_version"])
def test_any_manifest_edit_refused(tmp_path, field):
    b = make_random_bundle(tmp_path / "b")
    edits = {
        "thresholds": lambda m: m["thresholds"].__setitem__(1, 0.25),
        "frontend": lambda m: m["frontend"].__setitem__("f_max", 7000.0),
        "hop_seconds": lambda m: m.__setitem__("hop_seconds", 0.25),
        "provenance": lambda m: m["provenance"].__setitem__("note", "edited"),
        "format_version": lambda m: m.pop("manifest_sha256"),
    }
    _edit_manifest(b, edits[field])
    with pytest.raises(BundleError, match="manifest digest mismatch"):
        Bundle.load(b.path)


@pytest.mark.parametrize(
    "value, needle",
    [
        (float("nan"), "thresholds.2: Input should be a finite number"),
        (-0.1, "thresholds.2: Input should be greater than 0"),
        (1.0, "thresholds.2: Input should be less than 1"),
    ],
)
def test_threshold_out_of_range_refused(tmp_path, value, needle):
    b = make_random_bundle(tmp_path / "b")
    _edit_manifest(b, lambda m: m["thresholds"].__setitem__(2, value))  # json writes NaN as NaN
    with pytest.raises(BundleError) as e:
        Bundle.load(b.path)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_bad_thresholds_cannot_be_saved(tmp_path):
    from pydantic import ValidationError

    from engines.bundle import Manifest

    m = Bundle.load(make_random_bundle(tmp_path / "b").path).manifest.model_dump()
    m["thresholds"][0] = float("nan")
    with pytest.raises(ValidationError, match="finite"):
        Manifest.model_validate(m)


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda fe: fe.__setitem__("power", float("nan")), "frontend.power"),
        (lambda fe: fe.__setitem__("power", -2.0), "frontend.power must be positive"),
        (lambda fe: fe.__setitem__("sample_rate", 500_000), "frontend.sample_rate 500000 is outside"),
        (lambda fe: fe.__setitem__("n_mels", 1000), "exceeds the 257 FFT bins"),
        (lambda fe: fe.__setitem__("amin", 2.0), "amin (2.0) must be below ref"),
    ],
)
def test_insane_frontend_refused(tmp_path, edit, needle):
    b = make_random_bundle(tmp_path / "b")
    _edit_manifest(b, lambda m: edit(m["frontend"]))
    with pytest.raises(BundleError) as e:
        Bundle.load(b.path)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_format1_bundle_refused_then_sealed(tmp_path):
    from engines.seal import main as seal_main

    b = make_random_bundle(tmp_path / "b")

    def as_format1(m):
        m["format_version"] = 1
        del m["manifest_sha256"], m["artifacts"]

    _edit_manifest(b, as_format1)
    with pytest.raises(BundleError, match="format version 1 has no manifest digest.*engines.seal"):
        Bundle.load(b.path)
    assert seal_main([str(b.path)]) == 0
    assert Bundle.load(b.path).manifest.format_version == 2


def test_shipped_default_manifest_is_sealed():
    from rt_tagger.bundled_model import default_bundle_path

    b = Bundle.load(default_bundle_path())
    assert "flute" in b.tags and len(b.manifest.manifest_sha256) == 64


def test_cli_names_the_tampered_manifest(tmp_path):
    from tests.rt_tagger.conftest import run_cli

    b = make_random_bundle(tmp_path / "b")
    _edit_manifest(b, lambda m: m["tags"].__setitem__(m["tags"].index("piano"), "piccolo"))
    demo = Path(__file__).resolve().parents[2] / "rt_tagger" / "demo" / "demo.ogg"
    p = run_cli("tag", str(demo), "--bundle", str(b.path))
    lines = p.stderr_text.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr_text
    assert "manifest digest mismatch" in lines[0] and "manifest.json" in lines[0]
