"""The live commands: ``devices``, ``listen`` (microphone) and ``stream`` (raw PCM on stdin).

``listen`` and ``stream`` run the pipeline until the source ends, ``--duration`` passes or
SIGINT/SIGTERM arrives, print one line per message (or JSON lines) and a summary on stderr.
"""

from __future__ import annotations

import json
import logging
import signal
import sys

from engines.errors import UserError
from rt_tagger.commands.console import print_summary
from rt_tagger.commands.settings_from_args import settings_from_args
from rt_tagger.message_line import ascii_only, format_message

__all__ = ["cmd_devices", "cmd_listen", "cmd_stream", "stop_on_signals"]

log = logging.getLogger(__name__)


def stop_on_signals():
    """A :class:`~rt_tagger.pipeline.StopRequest` set by SIGINT or SIGTERM, so that the run ends
    cleanly and its end message says which ("sigint" / "sigterm")."""
    from rt_tagger.pipeline import StopRequest

    stop = StopRequest()

    def handler(signum, frame):
        stop.request(signal.Signals(signum).name.lower())

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            signal.signal(sig, handler)
        except ValueError:  # not the main thread (tests calling main() from a thread)
            pass
    return stop


def cmd_devices(args) -> int:
    from rt_tagger.sources import list_input_devices

    settings_from_args(args)  # invalid settings fail at start, whatever the command
    inputs = list_input_devices()
    if args.json:
        print(json.dumps(inputs, indent=2))
        return 0
    if not inputs:
        print("no audio input devices found")
        return 1
    for d in inputs:
        mark = "*" if d["default"] else " "
        print(
            f"{mark} {d['index']:3d}  {d['name']}  ({d['channels']} ch, {d['default_samplerate']:.0f} Hz, {d['hostapi']})"
        )
    return 0


def _run_live(args, source_factory) -> int:
    """listen / stream: build settings, pipeline, publisher; run until the source ends or a signal."""
    from rt_tagger.bundled_model import load_bundle
    from rt_tagger.pipeline import Pipeline
    from rt_tagger.publisher import Publisher

    stop = stop_on_signals()  # from the start: a signal during start-up still ends the stream cleanly
    st = settings_from_args(args)
    source = source_factory(st)  # opens devices / checks formats before the model loads
    bundle = load_bundle(st.bundle)
    publisher = None if args.no_publish else Publisher.from_settings(st.publish)
    json_lines = getattr(args, "json", False)
    plain = ascii_only(sys.stdout)

    def show(msg):
        if json_lines:
            print(msg.model_dump_json(), flush=True)
        elif not args.quiet:
            print(format_message(msg, ascii_only=plain), flush=True)

    try:
        with Pipeline(bundle, st, publisher=publisher, on_message=show, keep_windows=False) as pipe:
            log.info("streaming %s", source.describe())
            res = pipe.run(source, duration_s=args.duration, stop=stop)
    finally:
        if publisher is not None:
            publisher.close()
    print_summary(res, source)
    return 0


def cmd_listen(args) -> int:
    from rt_tagger.sources import MicSource

    def factory(st):
        a = st.audio
        return MicSource(
            a.device, a.sample_rate, a.channels, a.block_size, a.ring_seconds,
            device_timeout_s=a.device_timeout_s, reopen_attempts=a.reopen_attempts,
        )  # fmt: skip

    return _run_live(args, factory)


def cmd_stream(args) -> int:
    from rt_tagger.sources import StdinSource

    if args.input != "-":
        raise UserError(
            f"stream reads raw PCM from standard input: use `rt-tagger stream -` (got {args.input!r})"
        )

    def factory(st):
        rate = st.audio.sample_rate
        if rate is None:  # raw PCM says nothing about its rate; guessing misreads the audio
            raise UserError(
                "stream needs --rate: the sample rate of the raw PCM (or audio.sample_rate in --config)"
            )
        return StdinSource(
            sys.stdin.buffer, rate, args.channels, args.format, st.audio.block_size, st.audio.ring_seconds
        )

    return _run_live(args, factory)
