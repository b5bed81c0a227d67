"""Audio sources: microphone (PortAudio), audio files and raw PCM on stdin.

Every source is a context manager with one interface (start on enter, stop and close on exit):
``sample_rate``, ``channels``, ``ring`` (the :class:`~rt_tagger.ring.RingBuffer` it fills),
``finished`` (no more audio will come), ``error`` (what stopped a reader thread, if anything),
counters and the backlog. Each written block is recorded with the wall-clock time its last frame
was captured and the time it arrived in the ring, so the pipeline can report capture→ring and
processing latency.

Consumer-side duties (called from the consumer loop, never from the producer): :meth:`Source.check`
raises what stopped the producer and, for the microphone, reopens a device that went silent;
:meth:`Source.note_starved` counts underflows. An *underflow* is the consumer waiting for audio
that was due: the ring is empty and a live source (microphone, stdin, real-time file replay) has
delivered nothing for more than one hop plus one of its blocks since its previous block (or since
it started). One gap counts once, however long it lasts. A file read as fast as possible has no
due time and never underflows.

Backlog (:meth:`Source.backlog_seconds`): audio that arrived but is not analysed yet — in the
ring, held by a reader blocked on a full ring, and for stdin the bytes still unread in the pipe.
A reader that waits for room in the ring (the tagger fell behind, the writer upstream is held
back) adds its waiting time to ``input_blocked_s`` (stdin; a fast file reader waits by design).

The microphone's PortAudio callback is native code (:mod:`rt_tagger.mic_callback`): it copies the
block into the preallocated ring, counts status flags, records two times and wakes the consumer,
without the GIL, so a consumer busy in Python never delays it. The stdin source's reader thread
runs :func:`rt_tagger.pipe_reader.read_pcm`, numba without the GIL too. The file source decodes on
a Python reader thread. Every producer writes an eventfd after each block, which
:meth:`Source.wait_for_audio` waits on: the consumer wakes as soon as audio lands.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
import struct
import termios
import threading
import time
from pathlib import Path
from typing import BinaryIO

import numpy as np

from engines.errors import UserError
from rt_tagger import mic_callback
from rt_tagger.decode import DecodeError, open_audio
from rt_tagger.ring import RingBuffer

__all__ = [
    "AudioInputError",
    "DeviceError",
    "DeviceLostError",
    "Source",
    "MicSource",
    "FileSource",
    "StdinSource",
    "list_input_devices",
    "resolve_device",
    "PCM_FORMATS",
]

log = logging.getLogger(__name__)

PCM_FORMATS = {"s16le": ("<i2", 1.0 / 32768.0), "f32le": ("<f4", 1.0)}
_RECORDS = 4096  # recent blocks whose capture/arrival times are kept


class AudioInputError(UserError):
    """Audio that cannot be read: missing, empty, corrupt or unsupported input."""


class DeviceError(UserError):
    """An input device that does not exist or cannot be opened."""


class DeviceLostError(DeviceError):
    """A capture device that stopped delivering audio and could not be reopened."""

    exit_code = 3


class Source:
    """Base class: owns the ring and the per-block timing records.

    Args:
        sample_rate: Frames per second of the produced audio.
        channels: Channels per frame.
        ring_seconds: Ring capacity in seconds.
    """

    kind = "source"
    live = True  # audio is due at real-time pace (underflows can happen)
    reports_blocking = False  # whether input_blocked_s means lag (stdin) or pacing (a fast file)
    blocked_s = 0.0  # producer-owned: time spent waiting for room in the ring
    held_frames = 0  # producer-owned: frames of the current block not in the ring yet
    status_flags = 0  # PortAudio callbacks with overflow/underflow flags (the microphone only)

    def __init__(self, sample_rate: int, channels: int, ring_seconds: float = 10.0) -> None:
        self.sample_rate = int(sample_rate)
        self.channels = int(channels)
        self.ring = RingBuffer(max(1, int(ring_seconds * self.sample_rate)), self.channels)
        self.finished = False
        self.error: BaseException | None = None
        self.started_wall: float | None = None
        # Block records, written by the producer only: ring position after the block, wall time the
        # block's last frame was captured, wall time it was in the ring; and how many were written.
        self._rec_end = np.zeros(_RECORDS, dtype=np.int64)
        self._rec_capture = np.zeros(_RECORDS, dtype=np.float64)
        self._rec_arrival = np.zeros(_RECORDS, dtype=np.float64)
        self._rec_count = np.zeros(1, dtype=np.int64)  # an array: the pipe reader writes it from numba
        self.block_frames = 0  # frames per producer block, when known (the underflow grace)
        self.device_reopens = 0  # consumer-owned (MicSource.check)
        self._starved_at = -1  # consumer-owned: ring write position of the last counted underflow
        # Written (+1) by the producer after every write into the ring, so the consumer wakes as
        # soon as a block lands. An eventfd: native producers write it without the GIL.
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._wake_poll = select.poll()  # poll, not select: descriptors above 1023 are fine
        self._wake_poll.register(self._wake_fd, select.POLLIN)

    def _record(self, capture_wall: float, arrival_wall: float) -> None:
        i = int(self._rec_count[0]) % _RECORDS
        self._rec_end[i] = self.ring.write_pos
        self._rec_capture[i] = capture_wall
        self._rec_arrival[i] = arrival_wall
        self._rec_count[0] += 1  # publish after the record is complete

    @property
    def last_arrival_wall(self) -> float | None:
        """Wall time the newest block arrived in the ring (None before the first)."""
        n = int(self._rec_count[0])
        return float(self._rec_arrival[(n - 1) % _RECORDS]) if n else None

    def times_at(self, pos: int) -> tuple[float | None, float | None]:
        """``(capture_wall, arrival_wall)`` of the block that holds ring frame ``pos``.

        Binary search over the most recent records (their end positions only grow);
        ``(None, None)`` when the block is no longer recorded.
        """
        n = int(self._rec_count[0])
        if n >= 2:  # the consumer asks about the newest block far most often: no search then
            i = (n - 1) % _RECORDS
            if self._rec_end[(n - 2) % _RECORDS] <= pos < self._rec_end[i]:
                return float(self._rec_capture[i]), float(self._rec_arrival[i])
        lo, hi = max(0, n - _RECORDS + 1), n  # the oldest slot may be overwritten mid-search
        while lo < hi:  # first record whose end is beyond pos
            mid = (lo + hi) // 2
            if self._rec_end[mid % _RECORDS] <= pos:
                lo = mid + 1
            else:
                hi = mid
        first = lo == max(0, n - _RECORDS + 1)
        if lo == n or (first and lo > 0 and self._rec_end[(lo - 1) % _RECORDS] > pos):
            return None, None
        i = lo % _RECORDS
        return float(self._rec_capture[i]), float(self._rec_arrival[i])

    def counters(self) -> dict[str, int | float]:
        return {
            "ring_overflow_samples": self.ring.overflow_samples,
            "ring_overflow_events": self.ring.overflow_events,
            "ring_underflow_events": self.ring.underflow_events,
            "input_status_flags": self.status_flags,
            "input_blocked_s": round(self.blocked_s, 4) if self.reports_blocking else 0.0,
            "device_reopens": self.device_reopens,
        }

    def backlog_seconds(self) -> float:
        """Seconds of audio that arrived but is not analysed yet (see the module docstring)."""
        return (self.ring.available() + self.held_frames + self._unread_frames()) / self.sample_rate

    def _unread_frames(self) -> int:
        return 0

    def check(self) -> None:
        """Consumer side: raise what stopped the producer, if anything."""
        if self.error is not None:
            raise self.error

    def note_starved(self, grace_s: float) -> None:
        """Consumer side, called while the ring is empty: count an underflow when a live source's
        next audio is overdue by more than ``grace_s`` plus one block (once per gap)."""
        if not self.live or self.finished or self.ring.write_pos == self._starved_at:
            return
        last = self.last_arrival_wall if self.last_arrival_wall is not None else self.started_wall
        if last is None:
            return
        if time.time() - last > grace_s + self.block_frames / self.sample_rate:
            self.ring.note_underflow()
            self._starved_at = self.ring.write_pos

    def describe(self) -> str:
        return f"{self.kind} {self.sample_rate} Hz × {self.channels} ch"

    def wait_for_audio(self, timeout: float) -> None:
        """Return when new audio may be in the ring, or after ``timeout`` seconds."""
        if self._wake_fd < 0:  # stopped: no producer any more
            time.sleep(timeout)
        elif self._wake_poll.poll(timeout * 1e3):
            with contextlib.suppress(BlockingIOError):  # cleared before the caller looks at the ring
                os.eventfd_read(self._wake_fd)

    def _wake(self) -> None:
        os.eventfd_write(self._wake_fd, 1)

    def _close_wake(self) -> None:
        """Close the eventfd; only once no producer can write it any more."""
        if self._wake_fd >= 0:
            os.close(self._wake_fd)
            self._wake_fd = -1

    # context manager -------------------------------------------------------------------------
    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Source:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class _ThreadSource(Source):
    """A source whose producer is a daemon thread running :meth:`_produce`."""

    def __init__(self, sample_rate: int, channels: int, ring_seconds: float, block_size: int) -> None:
        super().__init__(sample_rate, channels, ring_seconds)
        self.block_size = self.block_frames = int(block_size)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.started_wall = time.time()
        self._thread = threading.Thread(target=self._run, name=f"rt-tagger-{self.kind}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._produce()
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            self.error = e
        finally:
            self.finished = True
            self._wake()

    def _produce(self) -> None:
        raise NotImplementedError

    def _put(self, block: np.ndarray, capture_wall: float, *, backpressure: bool) -> None:
        """Write a block; with ``backpressure`` wait for room instead of overflowing."""
        if backpressure:  # write what fits, wait for the consumer, repeat (blocks may exceed the ring)
            done = 0
            while done < block.shape[0] and not self._stop.is_set():
                k = min(self.ring.free(), block.shape[0] - done)
                self.held_frames = block.shape[0] - done
                if k == 0:
                    t = time.perf_counter()
                    time.sleep(0.0005)
                    self.blocked_s += time.perf_counter() - t
                    continue
                self.ring.write(block[done : done + k])
                done += k
                self._record(capture_wall, time.time())
                self._wake()
            self.held_frames = 0
            return
        self.ring.write(block)
        self._record(capture_wall, time.time())
        self._wake()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        if self._thread is None or not self._thread.is_alive():
            self._close_wake()  # not while a stuck reader may still write it
        self._close()

    def _close(self) -> None:
        pass


class FileSource(_ThreadSource):
    """An audio file (wav, flac, ogg, mp3, m4a…; :mod:`rt_tagger.decode`), decoded block by block.

    Args:
        path: The file.
        block_size: Frames per block.
        realtime: Pace blocks at the file's real-time rate (a block "is captured" when its last
            frame would have been); otherwise as fast as the consumer takes them (no overflow).
        ring_seconds: Ring capacity.

    Raises:
        AudioInputError: missing, empty, unreadable or zero-length file.
    """

    kind = "file"

    def __init__(
        self, path: str | Path, block_size: int = 1024, realtime: bool = False, ring_seconds: float = 10.0
    ):
        self.path = Path(path)
        if not self.path.exists():
            raise AudioInputError(f"audio file not found: {self.path}")
        if not self.path.is_file():
            raise AudioInputError(f"not a file: {self.path}")
        if self.path.stat().st_size == 0:
            raise AudioInputError(f"audio file is empty (0 bytes): {self.path}")
        try:
            self._audio = open_audio(self.path)
        except DecodeError as e:
            raise AudioInputError(f"cannot decode {self.path}: {e}") from None
        if self._audio.frames == 0:
            self._audio.close()
            raise AudioInputError(f"audio file has no samples (zero-length audio): {self.path}")
        short = self._audio.header_shortfall()
        if short is not None:
            self._audio.close()
            raise AudioInputError(
                f"{self.path} is truncated: its header promises {short[0]} bytes of audio, the file holds {short[1]}"
            )
        self.frames = self._audio.frames  # as the header says; a truncated file may hold fewer
        self.realtime = self.live = bool(realtime)
        self.frames_read = 0
        super().__init__(self._audio.sample_rate, self._audio.channels, ring_seconds, block_size)

    def describe(self) -> str:
        pace = "real time" if self.realtime else "fast"
        return f"file {self.path.name} ({self.sample_rate} Hz × {self.channels} ch, {pace})"

    def _produce(self) -> None:
        buf = np.empty((self.block_size, self.channels), dtype=np.float32)
        t0 = time.time()
        while not self._stop.is_set():
            try:
                n = self._audio.read(buf)
            except DecodeError as e:
                raise AudioInputError(
                    f"cannot decode {self.path} after {self.frames_read / self.sample_rate:.2f} s: {e}"
                ) from None
            if n == 0:
                break
            if self.realtime:
                due = t0 + (self.frames_read + n) / self.sample_rate
                delay = due - time.time()
                if delay > 0:
                    time.sleep(delay)
                capture = due
            else:
                capture = time.time()
            self._put(buf[:n], capture, backpressure=not self.realtime)
            self.frames_read += n
        if self._stop.is_set():
            return
        if self.frames_read == 0:
            raise AudioInputError(f"no audio could be decoded from {self.path}")
        # MP3/MP4 headers only estimate the length; for the others a shortfall means a cut-off file.
        if self.frames_read < self.frames and self._audio.exact_length:
            raise AudioInputError(
                f"{self.path} is truncated or corrupt: its header promises {self.frames} frames, "
                f"only {self.frames_read} could be decoded"
            )

    def _close(self) -> None:
        self._audio.close()


class StdinSource(_ThreadSource):
    """Raw interleaved PCM from a pipe, file or terminal (``rt-tagger stream -``).

    Args:
        stream: A binary file object with a descriptor (``sys.stdin.buffer``, a pipe, a file).
        sample_rate: Frames per second.
        channels: Interleaved channels.
        fmt: ``s16le`` or ``f32le``.
        block_size: Frames per read at most.
        ring_seconds: Ring capacity.

    The reader is :func:`rt_tagger.pipe_reader.read_pcm`, which runs without the GIL (why: its
    module docstring). It reads the descriptor directly, never through the buffered object: a
    thread blocked inside ``BufferedReader.read`` holds its lock, and interpreter shutdown then
    aborts (``Fatal Python error: _enter_buffered_busy``). A read takes what the pipe holds now, up
    to one block, so a finished window never waits for the writer's next block. A trailing partial
    frame at end of input is dropped, counted in ``trailing_bytes`` and logged.
    """

    kind = "stdin"
    reports_blocking = True

    def __init__(
        self,
        stream: BinaryIO,
        sample_rate: int,
        channels: int = 1,
        fmt: str = "s16le",
        block_size: int = 1024,
        ring_seconds: float = 10.0,
    ) -> None:
        from rt_tagger import pipe_reader

        if fmt not in PCM_FORMATS:
            raise AudioInputError(f"unsupported PCM format {fmt!r}; supported: {', '.join(PCM_FORMATS)}")
        if sample_rate <= 0 or channels <= 0:
            raise AudioInputError(f"invalid PCM layout: rate={sample_rate}, channels={channels}")
        try:
            self.fd = stream.fileno()
        except (AttributeError, OSError, ValueError):
            raise AudioInputError(
                "raw PCM input must be a pipe, a file or a terminal (it has no file descriptor)"
            ) from None
        self.stream = stream
        self.fmt = fmt
        dtype, self._scale = PCM_FORMATS[fmt]
        self.frame_bytes = np.dtype(dtype).itemsize * channels
        self._pipe = pipe_reader
        self._state = pipe_reader.new_state()  # counters shared with the reader (pipe_reader indices)
        self._staging = np.zeros(max(1, int(block_size)) * self.frame_bytes, np.uint8)
        self._samples = self._staging.view(dtype)  # little-endian: numba refuses it on other hosts
        super().__init__(sample_rate, channels, ring_seconds, block_size)
        self._state[pipe_reader.STOP] = 1  # compile (or load) the reader now, not on its thread
        self._read_pcm()
        self._state[pipe_reader.STOP] = 0

    def describe(self) -> str:
        return f"stdin {self.fmt} {self.sample_rate} Hz × {self.channels} ch"

    @property
    def frames_read(self) -> int:
        return int(self._state[self._pipe.FRAMES_READ])

    @property
    def held_frames(self) -> int:
        return int(self._state[self._pipe.HELD_FRAMES])

    @property
    def blocked_s(self) -> float:
        return float(self._state[self._pipe.BLOCKED_NS]) / 1e9

    @property
    def trailing_bytes(self) -> int:
        return int(self._state[self._pipe.TRAILING_BYTES])

    def _unread_frames(self) -> int:
        """Whole frames waiting in the pipe (FIONREAD), 0 where the descriptor cannot tell."""
        try:
            buf = fcntl.ioctl(self.fd, termios.FIONREAD, b"\0\0\0\0")
        except OSError:
            return 0
        return struct.unpack("i", buf)[0] // self.frame_bytes

    def _read_pcm(self) -> int:
        return self._pipe.read_pcm(
            self.fd,
            self._wake_fd,
            self._staging,
            self._samples,
            np.float32(self._scale),
            self.ring.buffer,
            self.ring.positions,
            self._rec_end,
            self._rec_capture,
            self._rec_arrival,
            self._rec_count,
            self._state,
        )

    def _produce(self) -> None:
        if self._read_pcm() == self._pipe.ERROR:
            raise AudioInputError(
                f"cannot read the raw PCM input: {os.strerror(int(self._state[self._pipe.ERRNO]))}"
            )
        if self.trailing_bytes:
            log.warning(
                "stdin ended with a partial frame: %d trailing byte(s) dropped (frame = %d bytes)",
                self.trailing_bytes,
                self.frame_bytes,
            )

    def stop(self) -> None:
        self._state[self._pipe.STOP] = 1  # the reader looks at it at least every 50 ms
        super().stop()


# --------------------------------------------------------------------------- microphone
def list_input_devices() -> list[dict]:
    """Input-capable PortAudio devices: ``index, name, channels, default_samplerate, hostapi, default``."""
    import sounddevice as sd

    try:
        devices = sd.query_devices()
        default_in = sd.default.device[0]
        apis = sd.query_hostapis()
    except sd.PortAudioError as e:
        raise DeviceError(f"cannot list audio devices: {e}") from None
    out = []
    for d in devices:
        if d["max_input_channels"] > 0:
            out.append(
                {
                    "index": d["index"],
                    "name": d["name"],
                    "channels": d["max_input_channels"],
                    "default_samplerate": d["default_samplerate"],
                    "hostapi": apis[d["hostapi"]]["name"],
                    "default": d["index"] == default_in,
                }
            )
    return out


def _inputs_line(inputs: list[dict]) -> str:
    return "; ".join(f"{d['index']}: {d['name']}" for d in inputs) or "none"


def resolve_device(spec: str | int | None) -> int | None:
    """A device index from an index or a case-insensitive name substring (None: system default)."""
    inputs = list_input_devices()
    if spec is None or spec == "":
        if not inputs:
            raise DeviceError("no audio input devices found")
        return None
    text = str(spec).strip()
    if text.lstrip("-").isdigit():
        idx = int(text)
        if any(d["index"] == idx for d in inputs):
            return idx
        raise DeviceError(f"no input device with index {idx}; available inputs: {_inputs_line(inputs)}")
    exact = [d for d in inputs if d["name"].lower() == text.lower()]
    matches = exact or [d for d in inputs if text.lower() in d["name"].lower()]
    if not matches:
        raise DeviceError(f"no input device matches {text!r}; available inputs: {_inputs_line(inputs)}")
    return matches[0]["index"]


class MicSource(Source):
    """A PortAudio input stream (sounddevice) feeding the ring from a native callback
    (:mod:`rt_tagger.mic_callback`: it runs without the GIL).

    A device that stops calling back (unplugged, sound server gone) is noticed by :meth:`check`
    on the consumer side: after ``device_timeout_s`` without a callback the stream is closed,
    PortAudio re-initialised (it only rescans devices then) and the device opened again by name,
    up to ``reopen_attempts`` times in a row, each successful reopen counted in
    ``device_reopens``. When audio flows again the attempts start over; when they are used up,
    :class:`DeviceLostError`.

    Args:
        device: Index or name substring (None: the default input).
        sample_rate: Capture rate (None: the device's default).
        channels: Requested channels (capped at what the device has).
        block_size: Frames per callback (0 lets PortAudio choose).
        ring_seconds: Ring capacity.
        device_timeout_s: Seconds without a callback before the device counts as gone.
        reopen_attempts: Reopens tried (``device_timeout_s`` apart) before giving up.
    """

    kind = "mic"

    def __init__(
        self,
        device: str | int | None = None,
        sample_rate: int | None = None,
        channels: int = 1,
        block_size: int = 1024,
        ring_seconds: float = 10.0,
        *,
        device_timeout_s: float = 3.0,
        reopen_attempts: int = 3,
    ) -> None:
        import sounddevice as sd

        self.device = resolve_device(device)
        info = sd.query_devices(self.device, "input")
        self.device_name = info["name"]
        rate = int(sample_rate or info["default_samplerate"])
        channels = max(1, min(int(channels), int(info["max_input_channels"])))
        try:
            sd.check_input_settings(device=self.device, samplerate=rate, channels=channels, dtype="float32")
        except (sd.PortAudioError, ValueError) as e:
            raise DeviceError(
                f"input device {self.device_name!r} cannot capture {rate} Hz × {channels} ch: {e}"
            ) from None
        super().__init__(rate, channels, ring_seconds)
        self.block_size = self.block_frames = int(block_size)
        self.device_timeout_s = float(device_timeout_s)
        self.reopen_attempts = int(reopen_attempts)
        self._opened_wall: float | None = None  # when the current stream started (None: stopped)
        self._attempts = 0  # reopens since audio last flowed
        # what the native callback reads and writes (rt_tagger.mic_callback), alive as long as self
        self._counts = np.zeros(mic_callback.COUNTS, np.int64)
        self._times = np.zeros(mic_callback.TIMES, np.float64)
        self._times[mic_callback.SAMPLE_RATE] = self.sample_rate
        self._scratch = np.zeros(3, np.int64)
        self._context = mic_callback.new_context(
            self.ring, self._rec_end, self._rec_capture, self._rec_arrival, self._rec_count,
            self._counts, self._times, self._scratch, self._wake_fd,
        )  # fmt: skip
        self._stream = self._open()

    def _open(self):
        import sounddevice as sd

        # sounddevice's base stream takes a C function pointer when wrap_callback is None
        return sd._StreamBase(
            kind="input",
            device=self.device,
            samplerate=self.sample_rate,
            channels=self.channels,
            dtype="float32",
            blocksize=self.block_size,
            callback=sd._ffi.cast("PaStreamCallback *", mic_callback.callback_address()),
            userdata=sd._ffi.cast("void *", self._context.ctypes.data),
            wrap_callback=None,
        )

    def describe(self) -> str:
        return f"mic {self.device_name!r} ({self.sample_rate} Hz × {self.channels} ch)"

    @property
    def status_flags(self) -> int:
        return int(self._counts[mic_callback.STATUS_FLAGS])

    @property
    def input_overflows(self) -> int:
        return int(self._counts[mic_callback.INPUT_OVERFLOWS])

    @property
    def callbacks(self) -> int:
        """PortAudio callbacks so far (all streams of this source)."""
        return int(self._counts[mic_callback.CALLBACKS])

    def _set_clock(self) -> None:
        """Map the stream's PortAudio clock to unix time (before it starts calling back)."""
        self._times[mic_callback.CLOCK_OFFSET] = time.time() - self._stream.time

    def start(self) -> None:
        import sounddevice as sd

        try:
            self._set_clock()
            self._stream.start()
        except sd.PortAudioError as e:
            raise DeviceError(f"cannot start input device {self.device_name!r}: {e}") from None
        self.started_wall = self._opened_wall = time.time()

    def check(self) -> None:
        """Consumer side: reopen the device after ``device_timeout_s`` without a callback."""
        if self._opened_wall is None:
            return
        last = self.last_arrival_wall
        if last is not None and last > self._opened_wall:
            self._attempts = 0  # audio flowed since the last (re)open
        silent_s = time.time() - max(last or 0.0, self._opened_wall)
        if silent_s < self.device_timeout_s:
            return
        if self._attempts >= self.reopen_attempts:
            since = time.time() - (last if last is not None else self.started_wall)
            raise DeviceLostError(
                f"input device {self.device_name!r} delivered no audio for {since:.1f} s and could not be "
                f"reopened ({self._attempts} attempt(s), {self.device_timeout_s:g} s apart)"
            )
        self._attempts += 1
        log.warning(
            "input device %r delivered no audio for %.1f s: reopening it (attempt %d of %d)",
            self.device_name, silent_s, self._attempts, self.reopen_attempts,
        )  # fmt: skip
        self._opened_wall = time.time()  # the next attempt comes device_timeout_s later
        try:
            self._reopen()
        except Exception as e:  # noqa: BLE001 - PortAudio/device errors: the next attempt or the error above
            log.warning(
                "reopening %r failed: %s",
                self.device_name,
                str(e).strip().splitlines()[0] if str(e).strip() else e,
            )
            return
        self.device_reopens += 1

    def _reopen(self) -> None:
        import sounddevice as sd

        self._close_stream()
        sd._terminate()  # PortAudio only sees devices (and servers) that came back after a re-init
        sd._initialize()
        self.device = resolve_device(self.device_name)
        self._stream = self._open()
        self._set_clock()
        self._stream.start()
        self._opened_wall = time.time()

    def _close_stream(self) -> None:
        import sounddevice as sd

        for step in (self._stream.abort, self._stream.close):
            with contextlib.suppress(sd.PortAudioError):
                step()

    def stop(self) -> None:
        self._opened_wall = None
        try:
            self._close_stream()
            self._close_wake()  # the stream is closed: its callback no longer runs
        finally:
            self.finished = True
