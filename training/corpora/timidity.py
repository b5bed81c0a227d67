"""TiMidity++ as a renderer of the synthetic corpus: GUS patch sets such as freepats.

:class:`TimidityRenderer` has the interface of :class:`training.corpora.synth.Renderer`
(``sr``, ``set_reverb``, ``render_stem``, ``close``): each stem becomes a one-track MIDI file that
the ``timidity`` binary renders to a WAV file, with the patch set as the only source of
instruments (a program it lacks comes out silent, so its tag is dropped, never borrowed from
another sample family).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

__all__ = ["NO_TIMIDITY", "TimidityRenderer", "stem_midi"]

NO_TIMIDITY = "the timidity binary is not installed (freepats is played by TiMidity++): apt-get install timidity freepats"

_TIMIDITY_TIMEOUT_S = 120.0  # one stem of a few seconds takes well under a second
_END_CHANNEL = 15  # MIDI channel 16: never used by a stem (melodic stems play on 0, drums on 9)


def _config_programs(text: str) -> set[int]:
    """Programs a timidity configuration defines in tone bank 0."""
    programs: set[int] = set()
    section = None
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if words[0] in ("bank", "drumset"):
            section = (words[0], words[1:2])
        elif section == ("bank", ["0"]) and words[0].isdigit():
            programs.add(int(words[0]))
    return programs


def _isolated_config(config: Path) -> str:
    """``config`` made the only source of instruments for bank 0 and drum set 0.

    timidity always reads /etc/timidity/timidity.cfg first (Debian points it at FluidR3_GM) and
    ``-c`` only adds on top, so every program and drum key of bank 0 / drum set 0 is undefined
    before ``config`` is read: a program ``config`` lacks is then silent, not borrowed from another
    sample family. ``dir`` lines are made absolute; a package fetched into ``<root>`` (config at
    ``<root>/etc/timidity/``) has its ``dir /usr/...`` pointed at ``<root>/usr/...``.
    """
    config = config.resolve()
    root = config.parents[2] if config.parent.as_posix().endswith("etc/timidity") else None
    lines = ["bank 0", *(f"undef {i}" for i in range(128)), "drumset 0", *(f"undef {i}" for i in range(128))]
    for line in config.read_text(errors="replace").splitlines():
        words = line.split()
        if len(words) == 2 and words[0] == "dir":
            d = Path(words[1])
            if not d.is_absolute():
                d = config.parent / d
            elif root is not None and (root / words[1].lstrip("/")).is_dir():
                d = root / words[1].lstrip("/")
            line = f"dir {d}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def stem_midi(notes: list, program: int, is_drum: bool, seconds: float, reverb_time: int):
    """A one-track MIDI file (mido) of one stem, a GS reverb-time SysEx first and a muted note last.

    Drums always use kit 0 and no bank is selected: freepats defines only tone bank 0 and drum set
    0, the ones :func:`_isolated_config` clears; another kit would be looked up in the drum sets of
    /etc/timidity/timidity.cfg (FluidR3_GM on Debian). The muted note at ``seconds`` makes timidity
    render that long, reverb tails included.
    """
    import mido  # pretty_midi's MIDI file library

    tpq = 960
    per_s = 2 * tpq  # ticks per second at the default tempo (120 bpm)
    chan = 9 if is_drum else 0
    gs = [0x40, 0x01, 0x34, reverb_time]  # GS reverb time (0-127)
    end = round(seconds * per_s)
    events = [
        (0, 0, mido.Message("sysex", data=[0x41, 0x10, 0x42, 0x12, *gs, (128 - sum(gs) % 128) % 128])),
        (0, 0, mido.Message("program_change", channel=chan, program=0 if is_drum else program)),
        # timidity stops once no voice sounds and no note-on is left (cutting reverb tails): a
        # note-on at ``end`` on an otherwise unused channel, muted (volume and expression 0)
        (0, 0, mido.Message("control_change", channel=_END_CHANNEL, control=7, value=0)),
        (0, 0, mido.Message("control_change", channel=_END_CHANNEL, control=11, value=0)),
        (end, 3, mido.Message("note_on", channel=_END_CHANNEL, note=60, velocity=1)),
        (end + 1, 3, mido.Message("note_off", channel=_END_CHANNEL, note=60)),
    ]
    for nt in notes:
        on = round(nt.start * per_s)
        if on >= end:
            continue
        events.append((on, 2, mido.Message("note_on", channel=chan, note=nt.pitch, velocity=nt.velocity)))
        off = max(round(nt.end * per_s), on + 1)
        events.append((off, 1, mido.Message("note_off", channel=chan, note=nt.pitch)))
    events.sort(key=lambda e: (e[0], e[1]))  # note-offs before note-ons at the same tick
    track = mido.MidiTrack()
    now = 0
    for at, _, msg in events:
        track.append(msg.copy(time=at - now))
        now = at
    midi = mido.MidiFile(type=0, ticks_per_beat=tpq)
    midi.tracks.append(track)
    return midi


class TimidityRenderer:
    """A timidity (TiMidity++) patch set, e.g. freepats: the :class:`Renderer` interface, one process per stem.

    The renderer owns a temporary folder (removed by :meth:`close`) holding the isolated
    configuration, written once. Each stem is written there as a MIDI file and rendered by the
    ``timidity`` binary to a 24-bit stereo WAV at ``sample_rate`` (stereo because timidity applies
    no reverb to mono output), then averaged to mono like FluidSynth's output. Nothing is played
    on a sound device; ``~/.timidity.cfg`` is not read (HOME points at the temporary folder).
    One renderer serves one process at a time, as :class:`Renderer` does.
    """

    def __init__(self, config: str | os.PathLike, sample_rate: int) -> None:
        exe = shutil.which("timidity")
        if exe is None:
            raise RuntimeError(NO_TIMIDITY)
        self.sr = sample_rate
        self.exe = exe
        self.config = Path(config)
        self._tmp = tempfile.TemporaryDirectory(prefix="rt-tagger-timidity-")
        self._dir = Path(self._tmp.name)
        self._isolated = self._dir / "patches.cfg"
        self._isolated.write_text(_isolated_config(self.config))
        self.reverb_level = 40  # timidity's default reverb send (1-127)
        self.reverb_time = 64  # GS default reverb time (0-127)
        self._check_isolated()

    def set_reverb(self, room: float, damp: float, width: float, level: float) -> None:
        """Reverb for the next stems, from FluidSynth's parameters (0-1).

        ``level`` becomes timidity's reverb send level (``-EFreverb=f,<1-127>``, Freeverb); ``room``
        becomes the GS reverb time (SysEx in the stem's MIDI file): 0.1 -> 0.8 s, 0.5 -> 1.7 s,
        0.9 -> 4.4 s, 1.0 -> 6.4 s, near FluidSynth's decay for the same room size. ``damp`` and
        ``width`` are not used: timidity's Freeverb fixes both (they follow the GS reverb character).
        """
        del damp, width
        self.reverb_level = int(np.clip(round(level * 127), 1, 127))
        self.reverb_time = int(np.clip(round(10 + 100 * room), 0, 110))  # the GS time table ends at 110

    def command(self, midi: Path, wav: Path, config: Path) -> list[str]:
        """The timidity command line that renders ``midi`` to ``wav``."""
        return [
            self.exe,
            "-c",
            str(config),
            "-idqq",  # dumb interface, quiet: no terminal UI, no messages
            "-Ow",  # RIFF WAVE file output (no sound device)
            "--output-stereo",
            "--output-24bit",  # no 16-bit noise shaping, no quantisation of quiet stems
            "-s",
            str(self.sr),
            "--preserve-silence",  # keep the leading rest: stems must stay aligned
            "--no-polyphony-reduction",
            f"-EFreverb=f,{self.reverb_level}",
            "-o",
            str(wav),
            str(midi),
        ]

    def render_stem(self, notes: list, program: int, is_drum: bool, n_samples: int) -> np.ndarray:
        """Render one track's notes (pretty_midi Notes) alone; returns ``n_samples`` mono samples."""
        midi, wav = self._dir / "stem.mid", self._dir / "stem.wav"
        wav.unlink(missing_ok=True)
        stem_midi(notes, program, is_drum, n_samples / self.sr, self.reverb_time).save(midi)
        cmd = self.command(midi, wav, self._isolated)
        try:
            r = subprocess.run(
                cmd,
                cwd=self._dir,
                env={**os.environ, "HOME": str(self._dir)},
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=_TIMIDITY_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            raise RuntimeError(
                f"timidity timed out after {_TIMIDITY_TIMEOUT_S:.0f} s: {shlex.join(cmd)}"
            ) from None
        if r.returncode != 0 or not wav.is_file():
            said = (r.stderr + r.stdout).strip()[-500:]
            raise RuntimeError(f"timidity failed (exit {r.returncode}): {shlex.join(cmd)}\n{said}")
        x, sr = sf.read(wav, dtype="float32", always_2d=True)
        if sr != self.sr:
            raise RuntimeError(f"timidity wrote {sr} Hz instead of {self.sr} Hz: {shlex.join(cmd)}")
        out = np.zeros(n_samples, np.float32)
        k = min(n_samples, len(x))
        out[:k] = x[:k].mean(axis=1)
        return out

    def _check_isolated(self) -> None:
        """Refuse to run when instruments from outside the patch set still sound (another family)."""
        missing = sorted(set(range(128)) - _config_programs(self.config.read_text(errors="replace")))
        if not missing:
            return
        import pretty_midi

        note = pretty_midi.Note(velocity=100, pitch=60, start=0.0, end=0.2)
        if np.any(self.render_stem([note], missing[0], False, self.sr // 2)):
            raise RuntimeError(
                f"timidity plays program {missing[0]}, which {self.config} does not define: another "
                "configuration (a 'soundfont' line in /etc/timidity/timidity.cfg or ~/.timidity.cfg?) "
                "would mix its samples into this family"
            )

    def close(self) -> None:
        self._tmp.cleanup()
