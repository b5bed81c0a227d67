"""The runtime subcommands of ``rt-tagger``: devices, listen, tag, stream, subscribe, demo.

``rt_tagger.cli`` turns :class:`~engines.errors.UserError` into one line on stderr and a non-zero
exit (tracebacks with ``--debug``); commands here only raise. Every command takes ``--config FILE``
and ``--bundle PATH`` (default: the bundle shipped in the package); settings come from
``configs/runtime.toml``, the ``--config`` file, ``RT_TAGGER_*`` variables and flags, in that order.

Nothing is half-written: ``--json FILE`` and ``--taggram FILE`` are written to a temporary file and
renamed, and only after every input was processed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from engines.errors import UserError
from rt_tagger.settings import RuntimeSettings, load_settings

__all__ = ["main", "build_parser"]

log = logging.getLogger(__name__)

RUNTIME_COMMANDS = ("devices", "listen", "tag", "stream", "subscribe", "demo")
EXTRA_HELP = {
    "train": "train a tagger (training stage)",
    "features": "extract features for training",
    "compile": "compile a bundle to ONNX / TensorRT",
    "bench": "measure latency, throughput and capacity",
}


class _Parser(argparse.ArgumentParser):
    """argparse that raises a UserError (one line, exit 2) instead of printing usage and exiting."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise UserError(f"{self.prog}: {message}")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML settings file (overrides configs/runtime.toml)")
    p.add_argument("--bundle", type=Path, help="model bundle directory (default: the shipped model)")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO) on stderr")


def _model_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", help="engines backend: auto, torch-cpu, … (default: auto)")
    p.add_argument("--hop", type=float, dest="hop_seconds", help="seconds between windows (0.1 .. window)")
    p.add_argument("--top", type=int, dest="top_k", help="tags per result (top-k)")


def _publish_opts(p: argparse.ArgumentParser, default_on: bool) -> None:
    p.add_argument(
        "--publish",
        metavar="ENDPOINT",
        nargs="?",
        const="",
        default="" if default_on else None,
        help="publish on this ZeroMQ endpoint (default: settings publish.endpoint, tcp://127.0.0.1:5556)",
    )
    if default_on:
        p.add_argument("--no-publish", action="store_true", help="do not publish, only print")
    p.add_argument("--stream-id", help="stream id; the topic is tags.<stream_id>")
    p.add_argument("--allow-remote", action="store_true", default=None, help="allow binding beyond loopback")
    p.add_argument("--curve-secret", type=Path, help="publisher's CURVE server.key_secret (encrypts)")
    p.add_argument("--full-scores", action="store_true", default=None, help="send the whole score vector")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("-q", "--quiet", action="store_true", help="do not print a line per message")


def build_parser(extra_commands: list[str] | None = None) -> argparse.ArgumentParser:
    extra = list(extra_commands or [])
    epilog = ""
    if extra:
        lines = [f"  {name:<10} {EXTRA_HELP.get(name, '')}" for name in extra]
        epilog = "other stages (rt-tagger COMMAND --help):\n" + "\n".join(lines)
    parser = _Parser(
        prog="rt-tagger",
        description="Streaming real-time music auto-tagging. Add --debug for tracebacks.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("devices", help="list audio input devices")
    _common(p)
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("listen", help="tag the microphone live and publish over ZeroMQ")
    _common(p)
    _model_opts(p)
    _publish_opts(p, default_on=True)
    p.add_argument("--device", help="input device index or name substring (rt-tagger devices)")
    p.add_argument("--rate", type=int, dest="sample_rate", help="capture rate (default: the device's)")
    p.add_argument("--channels", type=int, help="capture channels (default 1)")

    p = sub.add_parser("tag", help="tag audio files (offline)")
    _common(p)
    _model_opts(p)
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument("--realtime", action="store_true", help="replay at real-time pace (as a live stream)")
    p.add_argument("--per-window", action="store_true", help="also list every window's top tags")
    p.add_argument("--json", nargs="?", const="-", metavar="FILE", help="JSON to stdout, or to FILE")
    p.add_argument("--taggram", type=Path, metavar="PNG", help="draw the tags over time into this image")
    p.add_argument("--block-size", type=int, help="frames per decoded block")

    p = sub.add_parser("stream", help="tag raw PCM from stdin (`stream -`) and publish")
    _common(p)
    _model_opts(p)
    _publish_opts(p, default_on=True)
    p.add_argument("input", metavar="-", help="'-' for standard input")
    p.add_argument("--rate", type=int, default=None, help="sample rate of the PCM (default: the model's)")
    p.add_argument("--channels", type=int, default=1, help="interleaved channels (default 1)")
    p.add_argument("--format", default="s16le", help="s16le (default) or f32le")
    p.add_argument("--json", action="store_true", help="print every message as a JSON line")

    p = sub.add_parser("subscribe", help="live view of the messages a publisher sends")
    _common(p)
    p.add_argument("--endpoint", help="publisher endpoint (default: settings publish.endpoint)")
    p.add_argument("--topic", default="tags.", help="topic prefix (default: tags.)")
    p.add_argument("--json", action="store_true", help="print raw JSON lines")
    p.add_argument("--count", type=int, help="exit after this many messages")
    p.add_argument("--timeout", type=float, help="exit when nothing arrives for this many seconds")
    p.add_argument("--curve-public", type=Path, help="publisher's CURVE server.key (public)")
    p.add_argument("--curve-client-dir", type=Path, help="folder with this client's CURVE key pair")

    p = sub.add_parser("demo", help="tag the bundled demo clip, showing what a subscriber receives")
    _common(p)
    _model_opts(p)
    p.add_argument("--fast", action="store_true", help="as fast as possible instead of real time")
    p.add_argument("--endpoint", help="where to publish (default: settings publish.endpoint)")
    return parser


# --------------------------------------------------------------------------------------- helpers
def _settings(args: argparse.Namespace, **extra) -> RuntimeSettings:
    get = lambda name: getattr(args, name, None)  # noqa: E731
    publish = {
        "allow_remote": get("allow_remote"),
        "curve_server_secret": get("curve_secret"),
        "full_scores": get("full_scores"),
    }
    if get("publish"):
        publish["endpoint"] = get("publish")
    return load_settings(
        args.config,
        bundle=get("bundle"),
        backend=get("backend"),
        hop_seconds=get("hop_seconds"),
        stream_id=get("stream_id"),
        aggregator={"top_k": get("top_k")},
        audio={
            "device": get("device"),
            "sample_rate": get("sample_rate"),
            "channels": get("channels") if args.command == "listen" else None,
            "block_size": get("block_size"),
        },
        publish=publish,
        **extra,
    )


def _quiet_logs(verbose: bool) -> None:
    """Without -v: our INFO lines off, and library chatter (torch's ONNX exporter warnings,
    FutureWarnings) off too, so a user error stays exactly one line on stderr."""
    if not verbose:
        for name in ("rt_tagger", "engines"):
            logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("torch").setLevel(logging.ERROR)
    # The ONNX exporter (first run of the onnxruntime backend) warns that torchvision is missing;
    # engines sets that logger's level itself, so a filter is what keeps it quiet.
    logging.getLogger("torch.onnx._internal.exporter._registration").addFilter(
        lambda r: verbose or r.levelno >= logging.ERROR
    )
    if not sys.warnoptions:
        import warnings

        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\..*")


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        _umask_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask_mode(path: str) -> None:
    """mkstemp files are 0600; give the final file the usual mode (0666 minus the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def _check_writable(path: Path, what: str) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UserError(f"{what} {path} is a directory")
    if parent.exists() and not os.access(parent, os.W_OK):
        raise UserError(f"cannot write {what} {path}: directory not writable")


def _line(msg) -> str:
    """One readable line per message (listen/stream/demo console view)."""
    if msg.kind == "heartbeat":
        where = f"{msg.window.end_s:7.2f}s" if msg.window else "      -"
        return f"#{msg.seq:<5d} {where}  ({msg.heartbeat_reason})"
    if msg.kind == "end":
        return f"#{msg.seq:<5d} end of stream ({msg.end.reason}) after {msg.end.stream_s:.2f} s"
    top = "  ".join(f"{t.tag} {t.score:.2f}" for t in msg.top)
    ev = " ".join(f"{e.tag}:{e.state}" for e in msg.events)
    lat = ""
    if msg.capture_wall_time and msg.publish_wall_time:
        lat = f"  [{(msg.publish_wall_time - msg.capture_wall_time) * 1e3:5.1f} ms]"
    return f"#{msg.seq:<5d} {msg.window.end_s:7.2f}s  {top}{('  | ' + ev) if ev else ''}{lat}"


def _open_publisher(st: RuntimeSettings):
    from rt_tagger.publisher import Publisher

    p = st.publish
    return Publisher(
        p.endpoint, sndhwm=p.sndhwm, allow_remote=p.allow_remote, curve_server_secret=p.curve_server_secret
    )


def _stop_on_signals():
    from rt_tagger.pipeline import StopRequest

    stop = StopRequest()

    def handler(signum, frame):
        stop.request(signal.Signals(signum).name.lower())  # "sigint" / "sigterm": the end message says so

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            signal.signal(sig, handler)
        except ValueError:  # not the main thread (tests calling main() from a thread)
            pass
    return stop


def _summary(res, source, out=sys.stderr) -> None:
    c = res.counters
    lost = {k: v for k, v in c.items() if v and k != "ring_overflow_events"}
    print(
        f"rt-tagger: {res.messages} messages ({res.heartbeats} heartbeats) over {res.duration_s:.1f} s "
        f"from {source.describe()}; drops: {lost or 'none'}",
        file=out,
    )


# --------------------------------------------------------------------------------------- commands
def cmd_devices(args) -> int:
    from rt_tagger.sources import list_input_devices

    _settings(args)  # invalid settings fail at start, whatever the command
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
    from rt_tagger.default_model import load_bundle
    from rt_tagger.pipeline import Pipeline

    stop = _stop_on_signals()  # from the start: a signal during start-up still ends the stream cleanly
    st = _settings(args)
    bundle = load_bundle(st.bundle)
    source = source_factory(st, bundle)  # opens devices / checks formats before the model warms
    publisher = None if args.no_publish else _open_publisher(st)
    json_lines = getattr(args, "json", False)

    def show(msg):
        if json_lines:
            print(msg.model_dump_json(), flush=True)
        elif not args.quiet:
            print(_line(msg), flush=True)

    try:
        with Pipeline(bundle, st, publisher=publisher, on_message=show, keep_windows=False) as pipe:
            log.info("streaming %s", source.describe())
            res = pipe.run(source, duration_s=args.duration, stop=stop)
    finally:
        if publisher is not None:
            publisher.close()
    _summary(res, source)
    return 0


def cmd_listen(args) -> int:
    from rt_tagger.sources import MicSource

    def factory(st, bundle):
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

    def factory(st, bundle):
        rate = args.rate or bundle.frontend.sample_rate
        return StdinSource(
            sys.stdin.buffer, rate, args.channels, args.format, st.audio.block_size, st.audio.ring_seconds
        )

    return _run_live(args, factory)


def cmd_tag(args) -> int:
    from rt_tagger.default_model import load_bundle
    from rt_tagger.pipeline import Pipeline
    from rt_tagger.sources import FileSource

    st = _settings(args)
    if args.json and args.json != "-":
        _check_writable(Path(args.json), "--json output")
    if args.taggram:
        _check_writable(args.taggram, "--taggram output")
    bundle = load_bundle(st.bundle)
    # Open every file first: a bad one fails before any work (and before any output).
    for f in args.files:
        FileSource(f, block_size=st.audio.block_size).stop()
    k = st.aggregator.top_k
    results = []
    with Pipeline(bundle, st, keep_windows=True) as pipe:
        for f in args.files:
            src = FileSource(
                f, block_size=st.audio.block_size, realtime=args.realtime, ring_seconds=st.audio.ring_seconds
            )
            t0 = time.perf_counter()
            res = pipe.run(src)
            results.append((f, res, time.perf_counter() - t0))
    docs = []
    for f, res, secs in results:
        doc = {
            "file": str(f),
            "duration_s": round(res.duration_s, 3),
            "processing_s": round(secs, 3),
            "model": bundle.manifest.name,
            "weights_sha256": bundle.manifest.weights_sha256[:12],
            "backend": res.backend.get("name"),
            "window_s": round(res.window_seconds, 4),
            "hop_s": round(res.hop_seconds, 4),
            "windows": len(res.windows),
            "top": [{"tag": t, "score": s} for t, s in res.clip_top(k)],
            "scores": {t: float(s) for t, s in zip(res.tags, res.clip_scores, strict=True)},
            "events": [e.model_dump() for e in res.events],
            "counters": res.counters,
        }
        if args.per_window:
            doc["per_window"] = [
                {
                    "start_s": round(w.start_s, 4),
                    "end_s": round(w.end_s, 4),
                    "top": [{"tag": t, "score": s} for t, s in w.top],
                    "probabilities": [float(x) for x in w.probabilities],
                    "scores": [float(x) for x in w.scores],
                }
                for w in res.windows
            ]
        docs.append(doc)
    if args.taggram:
        import numpy as np

        from rt_tagger.taggram import draw_taggram

        for i, (f, res, _) in enumerate(results):
            out = (
                args.taggram
                if len(results) == 1
                else args.taggram.with_name(f"{args.taggram.stem}_{i}_{Path(f).stem}{args.taggram.suffix}")
            )
            probs = np.array([w.probabilities for w in res.windows]).reshape(-1, len(res.tags))
            draw_taggram(probs, res.tags, out, window_ends_s=[w.end_s for w in res.windows], title=str(f))
    if args.json:
        text = json.dumps(docs if len(docs) > 1 else docs[0], indent=2) + "\n"
        if args.json == "-":
            sys.stdout.write(text)
        else:
            _atomic_write_text(Path(args.json), text)
    if not args.json or args.json != "-":
        for doc, (f, res, _) in zip(docs, results, strict=True):
            tops = "  ".join(f"{t['tag']} {t['score']:.3f}" for t in doc["top"])
            print(f"{f}: {tops}")
            if args.per_window:
                for w in res.windows:
                    wt = "  ".join(f"{t} {s:.3f}" for t, s in w.top)
                    print(f"  {w.start_s:8.2f}-{w.end_s:8.2f}s  {wt}")
    return 0


def cmd_subscribe(args) -> int:
    from rt_tagger.subscribe import run_subscribe

    st = load_settings(args.config)
    return run_subscribe(
        args.endpoint or st.publish.endpoint,
        args.topic,
        raw_json=args.json,
        count=args.count,
        timeout_s=args.timeout,
        curve_server_public=args.curve_public,
        curve_client_dir=args.curve_client_dir,
    )


def cmd_demo(args) -> int:
    from rt_tagger.default_model import load_bundle
    from rt_tagger.pipeline import Pipeline
    from rt_tagger.publisher import Publisher
    from rt_tagger.sources import FileSource

    st = _settings(args)
    bundle = load_bundle(st.bundle)
    clip = Path(__file__).resolve().parent / "demo" / "demo.ogg"
    endpoint = args.endpoint or st.publish.endpoint
    print(
        f"rt-tagger demo: {clip.name} (see rt_tagger/demo/SOURCE.md), model {bundle.manifest.name}",
        flush=True,
    )
    with Publisher(endpoint, sndhwm=st.publish.sndhwm) as pub:
        # The subscriber is a separate OS process, exactly as another application would be.
        cmd = [
            sys.executable,
            "-m",
            "rt_tagger.cli",
            "subscribe",
            "--endpoint",
            pub.endpoint,
            "--timeout",
            "10",
        ]
        print(
            f"publishing on {pub.endpoint}; subscriber process: rt-tagger subscribe --endpoint {pub.endpoint}",
            flush=True,
        )
        sub = subprocess.Popen(cmd, stdout=sys.stdout, stderr=sys.stderr)
        try:
            if not pub.wait_for_subscriber(15.0):
                raise UserError("the demo subscriber did not connect within 15 s")
            with Pipeline(bundle, st, publisher=pub, keep_windows=True) as pipe:
                src = FileSource(clip, block_size=st.audio.block_size, realtime=not args.fast)
                res = pipe.run(src)
            time.sleep(0.5)  # let the last messages reach the subscriber
        finally:
            sub.terminate()
            try:
                sub.wait(timeout=5)
            except subprocess.TimeoutExpired:
                sub.kill()
    tops = "  ".join(f"{t} {s:.2f}" for t, s in res.clip_top(5))
    print(f"rt-tagger demo: {res.messages} messages published; whole clip: {tops}", flush=True)
    return 0


COMMANDS = {
    "devices": cmd_devices,
    "listen": cmd_listen,
    "tag": cmd_tag,
    "stream": cmd_stream,
    "subscribe": cmd_subscribe,
    "demo": cmd_demo,
}


def main(argv: list[str], extra_commands: list[str] | None = None) -> int:
    """Parse ``argv`` and run one runtime command; user errors propagate as :class:`UserError`."""
    parser = build_parser(extra_commands)
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    args = parser.parse_args(argv)
    _quiet_logs(getattr(args, "verbose", False) or args.command in ("listen", "stream", "demo"))
    if (
        args.command in ("listen", "stream")
        and getattr(args, "no_publish", False) is False
        and args.publish is None
    ):
        args.publish = ""
    return COMMANDS[args.command](args)
