"""rt_tagger.decode: MP3 and m4a/AAC through ffmpeg (PyAV), right, quiet and block-invariant.

The fixtures are real files made by the ffmpeg command-line encoder at test time from the demo clip,
among them the 16 kHz / 24 kb/s MP3 on which libsndfile's mpg123 printed 122 error lines and gave
other samples in blocks than whole.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf

from rt_tagger.decode import DecodeError, open_audio, uses_ffmpeg
from rt_tagger.sources import AudioInputError, FileSource
from tests.rt_tagger.conftest import run_cli
from tests.rt_tagger.test_sources import drain

pytestmark = pytest.mark.skipif(
    shutil.which("ffmpeg") is None,
    reason="the ffmpeg command makes the MP3/M4A fixtures (scripts/dev.sh installs it)",
)

ENCODINGS = {
    "low.mp3": ["-ar", "16000", "-ac", "1", "-b:a", "24k"],
    "stereo.mp3": ["-ar", "44100", "-ac", "2", "-b:a", "128k"],
    "aac.m4a": ["-ar", "16000", "-ac", "1", "-c:a", "aac", "-b:a", "64k"],
}


@pytest.fixture(scope="module")
def encoded(tmp_path_factory, demo_audio):
    """{name: path} of 8 s of the demo clip encoded by ffmpeg, plus the source WAV under "source"."""
    x, sr = demo_audio
    d = tmp_path_factory.mktemp("encoded")
    source = d / "source.wav"
    sf.write(str(source), x[: 8 * sr], sr, subtype="PCM_16")
    files = {"source": source}
    for name, args in ENCODINGS.items():
        files[name] = d / name
        subprocess.run(
            ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(source), *args, str(d / name)],
            check=True,
        )
    return files


def _aligned_correlation(got: np.ndarray, ref: np.ndarray, max_lag: int = 3000) -> float:
    """Best Pearson correlation of ``got`` with ``ref`` over codec delays up to ``max_lag`` samples."""
    n = min(len(got), len(ref)) - max_lag
    best = -1.0
    for lag in range(0, max_lag, 1):
        a, b = got[lag : lag + n], ref[:n]
        best = max(best, float(np.corrcoef(a, b)[0, 1]))
        if best > 0.99:
            break
    return best


@pytest.mark.parametrize("name", list(ENCODINGS))
def test_blocks_equal_whole_and_close_to_source(encoded, demo_audio, name):
    x, sr = demo_audio
    path = encoded[name]
    assert uses_ffmpeg(path)
    whole = drain(FileSource(path, block_size=1 << 22))
    for block in (1, 100, 1024, 50000):
        src = FileSource(path, block_size=block, ring_seconds=1.0)  # ring smaller than the file: backpressure
        np.testing.assert_array_equal(drain(src), whole)
    assert src.ring.overflow_samples == 0
    audio = open_audio(path)
    rate, channels = audio.sample_rate, audio.channels
    audio.close()
    assert (src.sample_rate, src.channels) == (rate, channels)
    assert abs(whole.shape[0] / rate - 8.0) < 0.1  # codecs pad/trim a few ms
    mono = whole.mean(axis=1)
    if rate != sr:  # the 44.1 kHz file: compare at the source rate
        from scipy.signal import resample_poly

        mono = resample_poly(mono, sr, rate)
    assert _aligned_correlation(mono, x[: 8 * sr]) > 0.95


def test_soundfile_still_reads_its_formats(encoded):
    assert not uses_ffmpeg(encoded["source"])
    got = drain(FileSource(encoded["source"], block_size=333))
    ref, _ = sf.read(str(encoded["source"]), dtype="float32", always_2d=True)
    np.testing.assert_array_equal(got, ref)


def test_junk_behind_an_mp3_sync_is_refused(tmp_path):
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(b"ID3" + bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8)))
    with pytest.raises((AudioInputError, DecodeError)) as e:
        drain(FileSource(junk))
    assert "\n" not in str(e.value)


def test_cli_tags_mp3_and_m4a_quietly(encoded, plain_bundle):
    # equal samples for every block size (above) mean equal scores; here: it works and says nothing else
    files = [str(encoded["low.mp3"]), str(encoded["aac.m4a"])]
    p = run_cli("tag", *files, "--bundle", str(plain_bundle.path), "--block-size", "256")
    assert p.returncode == 0, p.stderr_text
    assert p.stderr_text.strip() == "", p.stderr_text  # no decoder chatter (was 122 libmpg123 lines)
    for f in files:
        assert f"{f}: " in p.stdout_text, p.stdout_text


def test_mp3_behind_leading_bytes_goes_to_ffmpeg(encoded, tmp_path):
    padded = tmp_path / "padded.mp3"
    padded.write_bytes(bytes(64) + encoded["low.mp3"].read_bytes())  # no ID3 or sync at offset 0
    assert not uses_ffmpeg(padded)
    audio = open_audio(padded)  # libsndfile finds the MP3; ffmpeg decodes it
    audio.close()
    assert type(audio).__name__ == "_FfmpegFile" and audio.format == "MP3"
    assert abs(drain(FileSource(padded, block_size=777)).shape[0] / audio.sample_rate - 8.0) < 0.1
