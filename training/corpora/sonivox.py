"""Sonivox EAS as a renderer of the synthetic corpus: a fourth, independent sample family.

Sonivox (the Sonic Network / Android "Embedded Audio Synthesis" General MIDI synthesiser,
Apache-2.0, Debian package ``libsonivox3``) carries its own wavetable inside the library: samples
of its own, shared with none of the soundfonts. :class:`SonivoxRenderer` has the interface of
:class:`training.corpora.synth.Renderer` (``sr``, ``set_reverb``, ``render_stem``, ``close``) and
calls the library through ctypes: each stem becomes a one-track MIDI file in memory, rendered at
the library's rate (22 050 Hz stereo in Debian's build), averaged to mono and resampled to the
corpus rate. Nothing is played on a sound device. Closing a stem's file clears the synthesiser
(voices and reverb), so no tail leaks into the next stem.
"""

from __future__ import annotations

import ctypes as C
import io
import os
from math import gcd

import numpy as np

from training.corpora.timidity import stem_midi

__all__ = ["SonivoxRenderer"]

_STATE_STOPPED = 4  # EAS_STATE_STOPPED
_MODULE_REVERB = 2  # EAS_MODULE_REVERB
_REVERB_BYPASS, _REVERB_PRESET, _REVERB_WET = 0, 1, 2  # EAS_PARAM_REVERB_*
_PRESETS = 4  # large hall, hall, chamber, room
_READ_AT = C.CFUNCTYPE(C.c_int, C.c_void_p, C.c_void_p, C.c_int, C.c_int)
_SIZE = C.CFUNCTYPE(C.c_int, C.c_void_p)


class _Config(C.Structure):
    """S_EAS_LIB_CONFIG (EAS_I32 is a C long: 8 bytes on x86-64)."""

    _fields_ = [
        ("libVersion", C.c_ulong),
        ("checkedVersion", C.c_uint),
        ("maxVoices", C.c_long),
        ("numChannels", C.c_long),
        ("sampleRate", C.c_long),
        ("mixBufferSize", C.c_long),
        ("filterEnabled", C.c_uint),
        ("buildTimeStamp", C.c_ulong),
        ("buildGUID", C.c_char_p),
    ]


class _File(C.Structure):
    """EAS_FILE: the library reads the MIDI file through these callbacks (here: from memory)."""

    _fields_ = [("handle", C.c_void_p), ("readAt", _READ_AT), ("size", _SIZE)]


def _load(path: str | os.PathLike) -> C.CDLL:
    lib = C.CDLL(str(path))
    lib.EAS_Config.restype = C.POINTER(_Config)
    lib.EAS_Config.argtypes = []
    p, n = C.c_void_p, C.c_long
    for name, args in {
        "EAS_Init": [p],
        "EAS_Shutdown": [p],
        "EAS_OpenFile": [p, p, p],
        "EAS_Prepare": [p, p],
        "EAS_Render": [p, p, n, p],
        "EAS_State": [p, p, p],
        "EAS_CloseFile": [p, p],
        "EAS_SetParameter": [p, n, n, n],
    }.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, C.c_long
    return lib


class SonivoxRenderer:
    """The Sonivox EAS synthesiser (``libsonivox.so`` at ``path``): the :class:`Renderer` interface."""

    def __init__(self, path: str | os.PathLike, sample_rate: int) -> None:
        from scipy.signal import resample_poly  # noqa: F401  (checked here, used per stem)

        self.sr = sample_rate
        self.lib = _load(path)
        cfg = self.lib.EAS_Config().contents
        self.native_sr, self.channels, self.block = cfg.sampleRate, cfg.numChannels, cfg.mixBufferSize
        if self.native_sr <= 0 or self.channels not in (1, 2) or self.block <= 0:
            raise RuntimeError(
                f"{path}: unexpected EAS configuration ({self.native_sr} Hz, {self.channels} ch)"
            )
        g = gcd(self.sr, self.native_sr)
        self._up, self._down = self.sr // g, self.native_sr // g
        self._data = C.c_void_p()
        self._check("EAS_Init", self.lib.EAS_Init(C.byref(self._data)))
        self.reverb = (_PRESETS - 1, 8000)  # room, modest wet level

    def _check(self, what: str, result: int) -> None:
        if result != 0:
            raise RuntimeError(f"sonivox: {what} failed (EAS error {result})")

    def set_reverb(self, room: float, damp: float, width: float, level: float) -> None:
        """Reverb for the next stems, from FluidSynth's parameters (0-1).

        ``room`` picks one of EAS's four presets (0 -> room, 1 -> large hall); ``level`` sets its wet
        level (0-32767). ``damp`` and ``width`` are not used: each preset fixes them.
        """
        del damp, width
        preset = int(np.clip(round((1.0 - room) * (_PRESETS - 1)), 0, _PRESETS - 1))
        self.reverb = (preset, int(np.clip(level, 0.0, 1.0) * 32767))

    def render_stem(self, notes: list, program: int, is_drum: bool, n_samples: int) -> np.ndarray:
        """Render one track's notes (pretty_midi Notes) alone; returns ``n_samples`` mono samples."""
        from scipy.signal import resample_poly

        buf = io.BytesIO()
        # (stem_midi's GS reverb SysEx is not EAS's reverb: that is set below, per stem)
        stem_midi(notes, program, is_drum, n_samples / self.sr, reverb_time=64).save(file=buf)
        data = buf.getvalue()
        mem = C.create_string_buffer(data, len(data))

        @_READ_AT
        def read_at(_handle, dst, offset, size):
            k = max(0, min(size, len(data) - offset))
            C.memmove(dst, C.addressof(mem) + offset, k)
            return k

        @_SIZE
        def size(_handle):
            return len(data)

        locator = _File(C.addressof(mem), read_at, size)  # a NULL handle is refused
        stream = C.c_void_p()
        lib, h = self.lib, self._data
        self._check("EAS_OpenFile", lib.EAS_OpenFile(h, C.byref(locator), C.byref(stream)))
        try:
            preset, wet = self.reverb
            lib.EAS_SetParameter(h, _MODULE_REVERB, _REVERB_BYPASS, 0)
            lib.EAS_SetParameter(h, _MODULE_REVERB, _REVERB_PRESET, preset)
            lib.EAS_SetParameter(h, _MODULE_REVERB, _REVERB_WET, wet)
            self._check("EAS_Prepare", lib.EAS_Prepare(h, stream))
            want = int(np.ceil(n_samples * self._down / self._up)) + self.block
            pcm = np.zeros((want + self.block, self.channels), np.int16)
            got, done, state = C.c_long(), 0, C.c_long()
            while done < want:
                ptr = pcm[done:].ctypes.data
                self._check("EAS_Render", lib.EAS_Render(h, ptr, self.block, C.byref(got)))
                done += got.value
                lib.EAS_State(h, stream, C.byref(state))
                if state.value == _STATE_STOPPED or got.value == 0:
                    break
        finally:
            lib.EAS_CloseFile(h, stream)
        mono = pcm[:done].astype(np.float32).mean(axis=1) / 32768.0
        out = resample_poly(mono, self._up, self._down).astype(np.float32)
        stem = np.zeros(n_samples, np.float32)
        stem[: min(n_samples, len(out))] = out[:n_samples]
        return stem

    def close(self) -> None:
        if self._data:
            self.lib.EAS_Shutdown(self._data)
            self._data = C.c_void_p()
