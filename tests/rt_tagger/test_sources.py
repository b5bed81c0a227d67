"""Sources: file decoding in blocks, stdin PCM parsing, device lookup, block timing records."""

from __future__ import annotations

import io
import os
import threading
import time

import numpy as np
import pytest
import soundfile as sf
from numba import njit

from rt_tagger.ring import load_acquire
from rt_tagger.sources import AudioInputError, DeviceError, FileSource, StdinSource, resolve_device


def drain(src) -> np.ndarray:
    """Run a thread source to its end, collecting everything it wrote into the ring (waiting for
    each block with the source's own wake-up)."""
    out = []
    with src:
        while True:
            fin = src.finished
            n = src.ring.available()
            if n:
                buf = np.empty((n, src.channels), np.float32)
                src.ring.read_into(buf)
                out.append(buf)
            elif fin:
                break
            else:
                src.wait_for_audio(0.05)
    assert src.error is None, src.error
    return np.concatenate(out) if out else np.zeros((0, src.channels), np.float32)


@pytest.mark.parametrize("block", [100, 1024, 50000])
def test_file_source_blocks_equal_whole_file(tmp_path, demo_audio, block):
    x, sr = demo_audio
    stereo = np.stack([x[: 3 * sr], -x[: 3 * sr]], axis=1)
    path = tmp_path / "s.flac"
    sf.write(str(path), stereo, sr, subtype="PCM_24")
    whole, _ = sf.read(str(path), dtype="float32", always_2d=True)
    src = FileSource(path, block_size=block, ring_seconds=1.0)  # ring smaller than the file: backpressure
    got = drain(src)
    assert (src.sample_rate, src.channels) == (sr, 2)
    np.testing.assert_array_equal(got, whole)
    assert src.ring.overflow_samples == 0
    cap, arr = src.times_at(src.ring.write_pos - 1)
    assert cap is not None and arr >= cap


def test_file_source_reads_mp3_and_ogg(tmp_path, demo_audio):
    x, sr = demo_audio
    for fmt, sub in (("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III")):
        p = tmp_path / f"a.{fmt.lower()}"
        sf.write(str(p), x[:sr], sr, format=fmt, subtype=sub)
        got = drain(FileSource(p, block_size=512))
        assert abs(got.shape[0] - sr) < 2000  # codecs pad/trim a little


def _pipe_fed(data: bytes, chunks: list[int] | None = None, keep_open: bool = False):
    """A pipe's read end, fed ``data`` by a thread in ``chunks`` of these sizes (default: at once)."""
    r, w = os.pipe()

    def feed():
        done, sizes = 0, iter(chunks or [len(data)])
        while done < len(data):
            n = next(sizes, len(data))
            os.write(w, data[done : done + n])
            done += n
            time.sleep(0.0005)
        if not keep_open:
            os.close(w)

    threading.Thread(target=feed, daemon=True).start()
    return os.fdopen(r, "rb"), w


def test_stdin_s16le_odd_reads_and_trailing_partial_frame(demo_audio):
    x, sr = demo_audio
    pcm = np.clip(np.round(x[:sr] * 32768), -32768, 32767).astype("<i2")
    data = pcm.tobytes() + b"\x01"  # half a sample at the end
    chunks = np.random.default_rng(0).integers(1, 900, 2000).tolist()  # frames split across reads
    rf, _ = _pipe_fed(data, chunks)
    src = StdinSource(rf, sr, 1, "s16le", block_size=333)
    got = drain(src)
    np.testing.assert_array_equal(got[:, 0], pcm.astype(np.float32) * np.float32(1 / 32768))
    assert src.trailing_bytes == 1 and src.frames_read == pcm.shape[0]
    cap, arr = src.times_at(src.ring.write_pos - 1)
    assert cap is not None and arr >= cap


def test_stdin_f32le_stereo_from_a_file(tmp_path):
    rng = np.random.default_rng(1)
    a = rng.uniform(-1, 1, (1000, 2)).astype("<f4")
    (tmp_path / "a.f32").write_bytes(a.tobytes())
    with open(tmp_path / "a.f32", "rb") as f:
        src = StdinSource(f, 8000, 2, "f32le", block_size=64)
        np.testing.assert_array_equal(drain(src), a)
    assert src.trailing_bytes == 0


@njit
def _wait_holding_the_gil(positions, target, limit):
    """Spin (holding the GIL: no nogil) until the ring's write position reaches ``target``."""
    i = 0
    while load_acquire(positions, 0) < target and i < limit:
        i += 1
    return load_acquire(positions, 0)


def test_stdin_reader_runs_while_the_gil_is_held():
    """The reader fills the ring while another thread holds the GIL (a Python reader could not)."""
    a = np.arange(4000, dtype="<i2")
    rf, w = _pipe_fed(a.tobytes(), keep_open=True)
    src = StdinSource(rf, 8000, 1, "s16le", block_size=256)
    with src:
        assert _wait_holding_the_gil(src.ring.positions, a.size, 1 << 34) == a.size
    os.close(w)


def test_stdin_stop_while_the_writer_is_silent():
    rf, w = _pipe_fed(b"", keep_open=True)
    src = StdinSource(rf, 8000, 1, "s16le")
    src.start()
    time.sleep(0.05)
    t = time.perf_counter()
    src.stop()
    assert time.perf_counter() - t < 1.0 and not src._thread.is_alive()
    assert src.error is None
    os.close(w)


def test_stdin_needs_a_descriptor():
    with pytest.raises(AudioInputError, match="must be a pipe, a file or a terminal"):
        StdinSource(io.BytesIO(b"\0\0"), 16000, 1, "s16le")


def test_stdin_unsupported_format():
    with pytest.raises(AudioInputError, match="unsupported PCM format 'u8'"):
        StdinSource(io.BytesIO(b""), 16000, 1, "u8")


def test_file_errors(tmp_path):
    with pytest.raises(AudioInputError, match="not found"):
        FileSource(tmp_path / "missing.wav")
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioInputError, match="empty"):
        FileSource(tmp_path / "empty.wav")
    (tmp_path / "junk.ogg").write_bytes(b"OggS" + bytes(range(256)) * 4)
    with pytest.raises(AudioInputError, match="cannot decode"):
        FileSource(tmp_path / "junk.ogg")
    sf.write(str(tmp_path / "zero.wav"), np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioInputError, match="zero-length"):
        FileSource(tmp_path / "zero.wav")


def test_unknown_device_lists_inputs():
    try:
        import sounddevice  # noqa: F401
    except OSError as e:  # PortAudio library missing
        pytest.skip(f"PortAudio not available: {e}")
    with pytest.raises(DeviceError) as e:
        resolve_device("no-such-device-xyz")
    assert "available inputs:" in str(e.value)
    with pytest.raises(DeviceError, match="no input device with index 9999"):
        resolve_device("9999")


def test_times_at_finds_each_frames_block():
    """Block records: a frame maps to the block that brought it (the newest block without a
    search), frames not yet written or long overwritten map to nothing."""
    from rt_tagger.sources import _RECORDS, Source

    src = Source(8000, 1, ring_seconds=1.0)
    ends = np.cumsum(np.random.default_rng(0).integers(1, 50, _RECORDS + 100))
    for k, end in enumerate(ends):
        src.ring.positions[0] = end
        src._record(capture_wall=1000.0 + k, arrival_wall=2000.0 + k)
    for k in (len(ends) - 1, len(ends) - 2, len(ends) - 700, 150):  # newest, older, oldest kept
        for pos in (ends[k - 1], ends[k] - 1):
            assert src.times_at(int(pos)) == (1000.0 + k, 2000.0 + k)
    assert src.times_at(int(ends[-1])) == (None, None)  # not written yet
    assert src.times_at(int(ends[50])) == (None, None)  # its record was overwritten


def test_stdin_read_error_is_one_clear_line():
    r, w = os.pipe()
    src = StdinSource(os.fdopen(r, "rb", closefd=False), 8000, 1, "s16le")
    os.close(r)  # the descriptor goes bad under the reader
    os.close(w)
    with src:
        src._thread.join(timeout=5)
    assert isinstance(src.error, AudioInputError)
    assert str(src.error) == "cannot read the raw PCM input: Bad file descriptor"


def test_thread_source_wakes_its_consumer_past_descriptor_1023(tmp_path, demo_audio):
    """The wake-up descriptor may be numbered above select()'s limit in a busy process."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"the hard limit on open files is {hard}: cannot open 1100 descriptors here")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        x, sr = demo_audio
        sf.write(str(tmp_path / "a.wav"), x[:sr], sr)
        src = FileSource(tmp_path / "a.wav", block_size=512)
        assert src._wake_fd > 1023
        got = drain(src)
        assert got.shape[0] == sr
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
