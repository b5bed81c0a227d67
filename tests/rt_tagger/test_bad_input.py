"""Bad input through the real CLI: one clear line on stderr, non-zero exit, no traceback (a
traceback only with --debug), and no half-written output files.

NaN/Inf audio: rejected by default with a line naming the stream time (``nonfinite=reject``);
``RT_TAGGER_NONFINITE=zero`` replaces them with 0 and counts them instead (tested in test_pipeline).
Truncated files are refused (the header promises more frames than can be decoded), except MP3,
whose header only estimates its length.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from tests.rt_tagger.conftest import cli_env, run_cli


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, demo_audio):
    d = tmp_path_factory.mktemp("bad")
    x, sr = demo_audio
    files = {}
    files["missing"] = d / "does-not-exist.wav"
    (d / "empty.wav").write_bytes(b"")
    files["empty"] = d / "empty.wav"
    sf.write(str(d / "zero.wav"), np.zeros(0, np.float32), sr)
    files["zero-length"] = d / "zero.wav"
    sf.write(str(d / "full.wav"), x[: 3 * sr], sr, subtype="PCM_16")
    data = (d / "full.wav").read_bytes()
    (d / "truncated.wav").write_bytes(data[: len(data) // 2])
    files["truncated-wav"] = d / "truncated.wav"
    sf.write(str(d / "full.flac"), x[: 3 * sr], sr)
    data = (d / "full.flac").read_bytes()
    (d / "truncated.flac").write_bytes(data[: len(data) // 2])
    files["truncated-flac"] = d / "truncated.flac"
    (d / "corrupt.ogg").write_bytes(
        b"OggS\x00\x02" + bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8))
    )
    files["corrupt-ogg"] = d / "corrupt.ogg"
    (d / "notaudio.mp3").write_text("this is not audio at all\n" * 50)
    files["text-as-mp3"] = d / "notaudio.mp3"
    y = x[: 3 * sr].copy()
    y[sr:] = np.nan
    sf.write(str(d / "nan.wav"), y, sr, subtype="FLOAT")
    files["nan"] = d / "nan.wav"
    y = x[: 3 * sr].copy()
    y[100] = np.inf
    sf.write(str(d / "inf.wav"), y, sr, subtype="FLOAT")
    files["inf"] = d / "inf.wav"
    return files


def assert_one_line_error(p, *needles: str) -> str:
    err = p.stderr_text.strip()
    assert p.returncode != 0, p.stdout_text
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "case, needle",
    [
        ("missing", "not found"),
        ("empty", "empty"),
        ("zero-length", "zero-length"),
        ("truncated-wav", "truncated"),
        ("truncated-flac", "cannot decode"),
        ("corrupt-ogg", "cannot decode"),
        ("text-as-mp3", "cannot decode"),
        ("nan", "NaN/Inf"),
        ("inf", "NaN/Inf"),
    ],
)
def test_bad_files(case, needle, bad_files, sensitive_bundle, tmp_path):
    out_json, out_png = tmp_path / "o.json", tmp_path / "o.png"
    p = run_cli(
        "tag", str(bad_files[case]), "--bundle", str(sensitive_bundle.path),
        "--json", str(out_json), "--taggram", str(out_png),
    )  # fmt: skip
    assert_one_line_error(p, "rt-tagger: error:", needle)
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temp file


def test_bad_second_file_writes_nothing(bad_files, short_wav, sensitive_bundle, tmp_path):
    out_json = tmp_path / "o.json"
    p = run_cli(
        "tag",
        str(short_wav),
        str(bad_files["nan"]),
        "--bundle",
        str(sensitive_bundle.path),
        "--json",
        str(out_json),
    )
    assert_one_line_error(p, "NaN/Inf")
    assert list(tmp_path.iterdir()) == []


def test_debug_shows_traceback(bad_files, sensitive_bundle):
    p = run_cli("--debug", "tag", str(bad_files["empty"]), "--bundle", str(sensitive_bundle.path))
    assert p.returncode != 0 and "Traceback" in p.stderr_text


def test_unsupported_pcm_format(sensitive_bundle):
    p = run_cli(
        "stream",
        "-",
        "--format",
        "u8",
        "--rate",
        "16000",
        "--bundle",
        str(sensitive_bundle.path),
        "--no-publish",
        input=b"\x00" * 100,
    )
    assert_one_line_error(p, "--format: invalid choice: 'u8' (choose from 's16le', 'f32le')")
    assert p.returncode == 2


@pytest.mark.parametrize(
    "rate, needle",
    [
        (None, "stream needs --rate"),  # raw PCM has no header: 16 kHz was silently assumed
        ("0", "--rate: must be > 0, got 0"),
        ("-44100", "--rate: must be > 0, got -44100"),
        ("abc", "--rate: expected an integer, got 'abc'"),
    ],
)
def test_stream_rate_is_required_and_positive(rate, needle, sensitive_bundle):
    rate_args = () if rate is None else (f"--rate={rate}",)
    p = run_cli(
        "stream",
        "-",
        *rate_args,
        "--bundle",
        str(sensitive_bundle.path),
        "--no-publish",
        input=b"\x00" * 64000,
    )
    assert_one_line_error(p, needle)
    assert p.returncode == 2 and p.stdout_text == ""


def test_stream_rate_from_config(tmp_path, sensitive_bundle):
    cfg = tmp_path / "rate.toml"
    cfg.write_text("[audio]\nsample_rate = 8000\n")
    pcm = np.zeros(8000 * 5, "<i2").tobytes()
    p = run_cli(
        "stream",
        "-",
        "--config",
        str(cfg),
        "--bundle",
        str(sensitive_bundle.path),
        "--no-publish",
        "--json",
        input=pcm,
    )
    assert p.returncode == 0, p.stderr_text
    msgs = [json.loads(line) for line in p.stdout_text.splitlines() if line.startswith("{")]
    assert msgs[-1]["kind"] == "end"
    assert msgs[-1]["end"]["stream_s"] == pytest.approx(5.0)  # 5 s of 8 kHz audio, not 2.5 s of 16 kHz
    assert msgs[-2]["window"]["end_s"] == pytest.approx(5.0, abs=0.6)


def test_empty_stdin(sensitive_bundle):
    p = run_cli(
        "stream",
        "-",
        "--rate",
        "16000",
        "--bundle",
        str(sensitive_bundle.path),
        "--no-publish",
        "-q",
        input=b"",
    )
    err = p.stderr_text.strip().splitlines()
    assert p.returncode != 0 and "Traceback" not in p.stderr_text
    assert err[-1].startswith("rt-tagger: error: no audio received"), p.stderr_text


def test_unknown_device(sensitive_bundle):
    p = run_cli(
        "listen", "--device", "no-such-device-xyz", "--bundle", str(sensitive_bundle.path), "--no-publish"
    )
    if "PortAudio" in p.stderr_text and "library" in p.stderr_text:
        pytest.skip(f"no PortAudio library: {p.stderr_text.strip()}")
    assert_one_line_error(p, "no input device matches 'no-such-device-xyz'", "available inputs:")


@pytest.mark.parametrize(
    "content, needle",
    [
        ("hop_seconds = 0.01\n", "hop_seconds=0.01"),
        ("[aggregator\n", "not valid TOML"),
        ("colour = 1\n", "unknown setting colour"),
    ],
)
def test_invalid_config(content, needle, tmp_path, short_wav, sensitive_bundle):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(content)
    p = run_cli("tag", str(short_wav), "--bundle", str(sensitive_bundle.path), "--config", str(cfg))
    assert_one_line_error(p, needle)


def test_invalid_env(short_wav, sensitive_bundle):
    p = run_cli(
        "tag",
        str(short_wav),
        "--bundle",
        str(sensitive_bundle.path),
        env=cli_env(RT_TAGGER_AGGREGATOR__MODE="median"),
    )
    assert_one_line_error(p, "aggregator.mode=median")


@pytest.mark.parametrize(
    "var, value, needle",
    [
        ("RT_TAGGER_FOO", "1", "unknown environment variable RT_TAGGER_FOO"),
        ("RT_TAGGER_HOP", "abc", "unknown environment variable RT_TAGGER_HOP"),  # the field is hop_seconds
        ("RT_TAGGER_HOP_SECONDS", "abc", "invalid setting hop_seconds=abc"),
        ("RT_TAGGER_AGGREGATOR", "{bad", "environment variable RT_TAGGER_AGGREGATOR is not valid JSON"),
    ],
)
def test_bad_environment_variables_are_one_line_errors(var, value, needle, short_wav, sensitive_bundle):
    p = run_cli("tag", str(short_wav), "--bundle", str(sensitive_bundle.path), env=cli_env(**{var: value}))
    line = assert_one_line_error(p, needle)
    assert "internal error" not in line and p.returncode == 2


def test_wrong_and_tampered_bundles(tmp_path, short_wav, sensitive_bundle):
    tampered = tmp_path / "tampered"
    shutil.copytree(sensitive_bundle.path, tampered)
    w = tampered / "weights.safetensors"
    data = bytearray(w.read_bytes())
    data[-10] ^= 0xFF
    w.write_bytes(bytes(data))
    pickled = tmp_path / "pickled"
    shutil.copytree(sensitive_bundle.path, pickled)
    m = json.loads((pickled / "manifest.json").read_text())
    m["weights_file"] = "weights.pt"
    (pickled / "manifest.json").write_text(json.dumps(m))
    cases = [
        (tampered, "sha256 mismatch"),
        (pickled, "safetensors"),
        (tmp_path / "nowhere", "bundle not found"),
        (short_wav, "must be a directory"),
    ]
    for bundle, needle in cases:
        p = run_cli("tag", str(short_wav), "--bundle", str(bundle), "--json", str(tmp_path / "o.json"))
        assert_one_line_error(p, needle)
    assert not (tmp_path / "o.json").exists()


def test_bad_hop_for_bundle(short_wav, sensitive_bundle):
    p = run_cli("tag", str(short_wav), "--bundle", str(sensitive_bundle.path), "--hop", "3")
    assert_one_line_error(p, "hop_seconds=3.0", "window")
