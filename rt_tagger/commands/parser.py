"""The ``rt-tagger`` argument parser: every runtime command's options, in one place.

Commands of the other stages (train, features, compile, bench) are dispatched by
:mod:`rt_tagger.cli` before this parser runs; they are listed here (help, unknown-command message)
so that a user sees every command.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from engines.errors import UserErrorParser
from engines.registry import BACKENDS
from rt_tagger import __version__, subscribe
from rt_tagger.settings import MIN_HOP_SECONDS
from rt_tagger.sources import PCM_FORMATS

__all__ = ["EXTRA_HELP", "build_parser"]

EXTRA_HELP = {
    "train": "train a tagger (training stage)",
    "features": "extract features for training",
    "compile": "compile a bundle to ONNX / TensorRT",
    "bench": "measure latency, throughput and capacity",
}


def positive_int(text: str) -> int:
    """argparse type: an integer > 0 (a rate of 0 must fail, not mean "default")."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML settings file (overrides configs/runtime.toml)")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO) on stderr")


def _model_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bundle",
        type=Path,
        help="model bundle directory, or lite (the shipped small model); default: the shipped model",
    )
    p.add_argument(
        "--backend",
        choices=["auto", *BACKENDS],
        help="inference backend (default: auto, see docs/engines.md)",
    )
    p.add_argument(
        "--hop", type=float, dest="hop_seconds", help=f"seconds between windows ({MIN_HOP_SECONDS} .. window)"
    )
    p.add_argument("--top", type=int, dest="top_k", help="tags per result (top-k)")


def _publish_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--publish",
        metavar="ENDPOINT",
        nargs="?",
        const="",
        default="",
        help="publish on this ZeroMQ endpoint (default: settings publish.endpoint, tcp://127.0.0.1:5556)",
    )
    p.add_argument("--no-publish", action="store_true", help="do not publish, only print")
    p.add_argument("--stream-id", help="stream id; the topic is tags.<stream_id> (see docs/messages.md)")
    p.add_argument("--allow-remote", action="store_true", default=None, help="allow binding beyond loopback")
    p.add_argument(
        "--curve-secret",
        type=Path,
        help="publisher's CURVE server.key_secret (encrypts; python -m rt_tagger.curve_keys)",
    )
    p.add_argument(
        "--curve-clients", type=Path, metavar="DIR", help="folder of accepted subscriber public keys (*.key)"
    )
    p.add_argument(
        "--insecure-remote",
        action="store_true",
        default=None,
        help="with --allow-remote: publish without CURVE (anyone on the network can read)",
    )
    p.add_argument("--full-scores", action="store_true", default=None, help="send the whole score vector")
    p.add_argument(
        "--embedding", action="store_true", default=None, help="send each window's embedding in its message"
    )
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("-q", "--quiet", action="store_true", help="do not print a line per message")


def build_parser(extra_commands: list[str] | None = None) -> argparse.ArgumentParser:
    parser = UserErrorParser(
        prog="rt-tagger", description="Streaming real-time music auto-tagging. Add --debug for tracebacks."
    )
    parser.add_argument("--version", action="version", version=f"rt-tagger {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=UserErrorParser)
    sub.required = True

    p = sub.add_parser("devices", help="list audio input devices")
    _common(p)
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("listen", help="tag the microphone live and publish over ZeroMQ")
    _common(p)
    _model_opts(p)
    _publish_opts(p)
    p.add_argument("--device", help="input device index or name substring (rt-tagger devices)")
    p.add_argument(
        "--rate", type=positive_int, dest="sample_rate", help="capture rate (default: the device's)"
    )
    p.add_argument("--channels", type=positive_int, help="capture channels (default 1)")

    p = sub.add_parser("tag", help="tag audio files (offline)")
    _common(p)
    _model_opts(p)
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument("--realtime", action="store_true", help="replay at real-time pace (as a live stream)")
    p.add_argument("--per-window", action="store_true", help="also list every window's top tags")
    p.add_argument("--json", nargs="?", const="-", metavar="FILE", help="JSON to stdout, or to FILE")
    p.add_argument("--taggram", type=Path, metavar="PNG", help="draw the tags over time into this image")
    p.add_argument("--block-size", type=int, help="frames per decoded block")

    p = sub.add_parser("embed", help="per-window embeddings of audio files into .npy or .safetensors")
    _common(p)
    p.add_argument(
        "--bundle",
        type=Path,
        help="model bundle directory, or lite (the shipped small model); default: the shipped model",
    )
    p.add_argument("--backend", choices=["auto", *BACKENDS], help="inference backend (default: auto)")
    p.add_argument("--hop", type=float, dest="hop_seconds", help="seconds between windows (0.1 .. window)")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="X.npy|X.safetensors",
        help="output file (format by suffix)",
    )
    p.add_argument("--block-size", type=int, help="frames per decoded block")

    p = sub.add_parser("stream", help="tag raw PCM from stdin (`stream -`) and publish")
    _common(p)
    _model_opts(p)
    _publish_opts(p)
    p.add_argument("input", metavar="-", help="'-' for standard input")
    p.add_argument(
        "--rate",
        type=positive_int,
        dest="sample_rate",
        help="sample rate of the PCM (required unless the config sets audio.sample_rate)",
    )
    p.add_argument("--channels", type=positive_int, default=1, help="interleaved channels (default 1)")
    p.add_argument(
        "--format", choices=list(PCM_FORMATS), default="s16le", help="sample format (default s16le)"
    )
    p.add_argument("--json", action="store_true", help="print every message as a JSON line")

    p = sub.add_parser("serve", help="tag many streams sent over the ingest protocol (docs/ingest.md)")
    _common(p)
    _model_opts(p)
    _publish_opts(p)
    p.add_argument(
        "--ingest",
        metavar="ENDPOINT",
        help="ROUTER endpoint clients send audio to (default tcp://127.0.0.1:5557)",
    )
    p.add_argument(
        "--max-streams", type=positive_int, help="open streams at most; more are refused (default 1000)"
    )
    p.add_argument(
        "--max-batch", type=positive_int, help="windows per backend batch at most (default: the backend's)"
    )
    p.add_argument(
        "--max-batch-delay-ms", type=float, help="how long a due window may wait to fill a batch (default 20)"
    )
    p.add_argument(
        "--buffer-s", type=float, help="how far a live stream may run ahead of real time (default 2)"
    )
    p.add_argument(
        "--idle-timeout", type=float, help="end a stream after this many seconds without audio (default 10)"
    )
    p.add_argument("--stats-interval", type=float, help="seconds between stats messages (default 5)")
    p.add_argument(
        "--frontend", choices=("auto", "stream", "batch"),
        help="log-mel per stream (stream) or all streams' new frames at once on the backend's device "
        "(batch); default auto: batch on a GPU backend",
    )  # fmt: skip
    p.add_argument(
        "--processes",
        type=positive_int,
        help="server processes sharing this machine and its GPU, behind the same endpoints (default 1)",
    )
    p.add_argument(
        "--ray", nargs="?", const="auto", metavar="ADDRESS",
        help="run shards as Ray actors on the cluster at ADDRESS (default: auto), behind this gateway",
    )  # fmt: skip
    p.add_argument(
        "--shards",
        type=positive_int,
        help="--ray: shards to run (default: one per GPU, else per --shard-cpus CPUs)",
    )
    p.add_argument(
        "--shard-cpus", type=positive_int, default=1, help="--ray: CPUs per shard without GPUs (default 1)"
    )
    p.add_argument(
        "--shard-resources",
        metavar="JSON",
        help="--ray: custom Ray resources per shard, e.g. '{\"rt_shard\": 1}'",
    )
    p.add_argument(
        "--shard-timeout",
        type=float,
        default=3.0,
        help="--ray: seconds without health before a shard is lost",
    )

    p = sub.add_parser("subscribe", help="live view of the messages a publisher sends")
    subscribe.add_arguments(p)

    p = sub.add_parser("demo", help="tag the bundled demo clip, showing what a subscriber receives")
    _common(p)
    _model_opts(p)
    p.add_argument("--fast", action="store_true", help="as fast as possible instead of real time")
    p.add_argument("--endpoint", help="where to publish (default: settings publish.endpoint)")

    for name in extra_commands or []:  # listed only: rt_tagger.cli runs them before parsing
        sub.add_parser(name, help=EXTRA_HELP.get(name, "") + f" (rt-tagger {name} --help)", add_help=False)
    return parser
