"""Audio file decoding for :class:`rt_tagger.sources.FileSource`: one reader interface, two decoders.

- libsndfile (``soundfile``) for WAV, FLAC, OGG/Vorbis/Opus, AIFF…: exact, and it knows the length;
- ffmpeg (PyAV, whose wheel bundles the libraries) for MP3 and MP4/m4a (AAC, ALAC): libsndfile's
  mpg123 prints error lines for some valid low-bitrate MP3s and gives other samples when read in
  blocks than whole, and it has no AAC at all.

Which one is picked from the file's first bytes (an ID3 tag or an MPEG/ADTS frame sync, or an MP4
``ftyp`` box), not from its name, so a text file called ``x.mp3`` still gets libsndfile's clear
refusal (an MP3 that libsndfile recognises behind leading bytes goes to ffmpeg too). The ffmpeg reader decodes packets in file order and hands out exactly the frames asked
for from what it decoded, so any block size yields the same samples as one read of the whole file.
ffmpeg's own logging stays off (PyAV's default); decoding problems become :class:`DecodeError`.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import numpy as np

from engines.errors import UserError

__all__ = ["DecodeError", "AudioFile", "open_audio", "uses_ffmpeg"]


class DecodeError(UserError):
    """A file no decoder can read; the message is the one-line reason (without the path)."""


class AudioFile:
    """An open audio file read as float32 frames ``(n, channels)``.

    Attributes:
        sample_rate: Frames per second.
        channels: Channels per frame.
        frames: Frames the header announces; an estimate when ``exact_length`` is False.
        exact_length: True when ``frames`` is exact, so fewer decoded frames mean a cut-off file.
        format: The container's name, for messages.
    """

    sample_rate: int
    channels: int
    frames: int
    exact_length: bool
    format: str

    def read(self, out: np.ndarray) -> int:
        """Fill ``out[:n]`` (float32, ``(block, channels)``) with the next frames; 0 at the end."""
        raise NotImplementedError

    def header_shortfall(self) -> tuple[int, int] | None:
        """``(declared, present)`` data bytes when the header promises more than the file holds."""
        return None

    def close(self) -> None:
        pass


def uses_ffmpeg(path: Path) -> bool:
    """True for MP3 (ID3 tag or MPEG audio / ADTS frame sync) and MP4/m4a (``ftyp`` box) content."""
    with open(path, "rb") as f:
        head = f.read(12)
    if head.startswith(b"ID3") or head[4:8] == b"ftyp":
        return True
    return len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0


def open_audio(path: str | os.PathLike) -> AudioFile:
    """Open ``path`` with the decoder that reads it right.

    Raises:
        DecodeError: no decoder can read it (the reason, one line).
    """
    path = Path(path)
    if uses_ffmpeg(path):
        return _FfmpegFile(path)
    audio = _SoundFile(path)
    if audio.format == "MP3":  # an MP3 behind leading junk that libsndfile found anyway
        audio.close()
        return _FfmpegFile(path)
    return audio


class _SoundFile(AudioFile):
    def __init__(self, path: Path) -> None:
        import soundfile as sf

        try:
            with _quiet_stderr():  # libsndfile's decoders print "Note: ..." lines on fd 2 for junk input
                self._f = sf.SoundFile(str(path))
        except (sf.LibsndfileError, RuntimeError, OSError) as e:
            raise DecodeError(_sf_reason(e)) from None
        self.sample_rate, self.channels, self.frames = self._f.samplerate, self._f.channels, self._f.frames
        self.format = self._f.format
        self.exact_length = True

    def read(self, out: np.ndarray) -> int:
        import soundfile as sf

        try:
            return self._f.read(frames=out.shape[0], dtype="float32", always_2d=True, out=out).shape[0]
        except (sf.LibsndfileError, RuntimeError) as e:
            raise DecodeError(_sf_reason(e)) from None

    def header_shortfall(self) -> tuple[int, int] | None:
        """libsndfile quietly shortens a WAV whose header promises more; its log says ``data : N (should be M)``.

        Streaming writers that cannot seek put 0 or 0xFFFFFFFF there: an unknown length, not a truncation.
        """
        if self.format not in ("WAV", "WAVEX", "RF64"):
            return None
        m = re.search(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", self._f.extra_info, re.MULTILINE)
        if not m:
            return None
        declared, present = int(m.group(1)), int(m.group(2))
        return (declared, present) if 0 < declared < 0xFFFFFF00 and declared > present else None

    def close(self) -> None:
        self._f.close()


class _FfmpegFile(AudioFile):
    def __init__(self, path: Path) -> None:
        import av

        self._av = av
        try:
            self._container = av.open(str(path), mode="r")
        except (av.FFmpegError, OSError, ValueError) as e:
            raise DecodeError(_av_reason(e)) from None
        streams = self._container.streams.audio
        if not streams:
            self._container.close()
            raise DecodeError("no audio stream in the file")
        stream = streams[0]
        self.sample_rate = int(stream.codec_context.sample_rate or stream.rate or 0)
        self.channels = int(stream.codec_context.channels or 0)
        if self.sample_rate <= 0 or self.channels <= 0:
            self._container.close()
            raise DecodeError("the audio stream has no sample rate or channel count")
        names = self._container.format.name.split(",")
        self.format = "MP4" if "mp4" in names else names[0].upper()
        self.exact_length = False  # container durations are estimates (MP3) or include codec padding
        if stream.duration is not None and stream.time_base is not None:
            seconds = float(stream.duration * stream.time_base)
        else:
            seconds = (self._container.duration or 0) / 1e6
        self.frames = max(1, round(seconds * self.sample_rate))  # unknown reads as "some", not "none"
        self._frames = self._container.decode(stream)
        self._pending = np.zeros((0, self.channels), np.float32)  # decoded, not yet handed out

    def _next_frames(self) -> np.ndarray | None:
        """The next decoded audio frame as float32 ``(n, channels)``, or None at the end."""
        av = self._av
        try:
            frame = next(self._frames)
        except StopIteration:
            return None
        except (av.FFmpegError, ValueError) as e:
            raise DecodeError(_av_reason(e)) from None
        x = frame.to_ndarray()
        if frame.format.is_planar:
            x = x.T  # (channels, n) -> (n, channels)
        else:
            x = x.reshape(-1, self.channels)
        if x.dtype.kind == "i":
            x = x.astype(np.float32) / np.float32(2 ** (8 * x.dtype.itemsize - 1))
        x = x.astype(np.float32, copy=False)
        if x.shape[1] != self.channels or frame.sample_rate != self.sample_rate:
            raise DecodeError(
                f"the stream changes format midway ({frame.sample_rate} Hz × {x.shape[1]} ch), not supported"
            )
        return x

    def read(self, out: np.ndarray) -> int:
        want = out.shape[0]
        while self._pending.shape[0] < want:
            more = self._next_frames()
            if more is None:
                break
            self._pending = np.concatenate([self._pending, more]) if self._pending.size else more
        n = min(want, self._pending.shape[0])
        out[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        self._container.close()


def _sf_reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "File does not exist or is not a regular file" in text:  # libsndfile's word for "no decoder took it"
        return "not a supported audio format, or corrupt"
    if ": " in text and text.startswith("Error opening"):
        text = text.split(": ", 1)[1]
    return text


def _av_reason(e: BaseException) -> str:
    # PyAV's messages end with "…: 'path'"; the caller names the file once.
    text = getattr(e, "strerror", None) or str(e).strip().splitlines()[0] or type(e).__name__
    return f"{text} (ffmpeg)"


@contextlib.contextmanager
def _quiet_stderr():
    """Silence C libraries writing to file descriptor 2 for the duration (main thread, short)."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
