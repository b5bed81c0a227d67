"""Command-line flags → :class:`~rt_tagger.settings.RuntimeSettings` (flags are the last layer)."""

from __future__ import annotations

import argparse

from rt_tagger.settings import RuntimeSettings, load_settings

__all__ = ["settings_from_args"]


def settings_from_args(args: argparse.Namespace, **extra) -> RuntimeSettings:
    """Settings from every layer, with the flags this command has (absent or ``None`` = not given)."""
    get = lambda name: getattr(args, name, None)  # noqa: E731
    publish = {
        "allow_remote": get("allow_remote"),
        "curve_server_secret": get("curve_secret"),
        "curve_clients": get("curve_clients"),
        "insecure_remote": get("insecure_remote"),
        "full_scores": get("full_scores"),
        "embedding": get("embedding"),
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
