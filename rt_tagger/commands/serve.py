"""``rt-tagger serve``: many streams in over the ingest protocol, tags out over ZeroMQ.

Runs until SIGINT/SIGTERM (or ``--duration``); every open stream then gets its ``end`` message.
See :mod:`rt_tagger.serve` for the loop and docs/ingest.md for the protocol.
"""

from __future__ import annotations

import logging
import threading

from rt_tagger.commands.live import open_publisher, stop_on_signals
from rt_tagger.commands.settings_from_args import settings_from_args

__all__ = ["cmd_serve"]

log = logging.getLogger(__name__)


def cmd_serve(args) -> int:
    from rt_tagger.default_model import load_bundle
    from rt_tagger.pipeline import Pipeline
    from rt_tagger.serve import Server, bind_ingest

    stop = stop_on_signals()
    serve = {
        "ingest": args.ingest,
        "max_streams": args.max_streams,
        "max_batch": args.max_batch,
        "max_batch_delay_ms": args.max_batch_delay_ms,
        "buffer_s": args.buffer_s,
        "idle_timeout_s": args.idle_timeout,
        "stats_interval_s": args.stats_interval,
    }
    st = settings_from_args(args, serve={k: v for k, v in serve.items() if v is not None})
    ingest = bind_ingest(st.serve)  # a busy port or bad endpoint fails before the model loads
    bundle = load_bundle(st.bundle)
    publisher = open_publisher(st)
    try:
        with Pipeline(bundle, st, publisher=publisher, keep_windows=False) as pipe:
            server = Server(pipe, publisher, st.serve, ingest_socket=ingest)
            if args.duration is not None:
                threading.Timer(args.duration, stop.request, args=("duration",)).start()
            if not args.quiet:
                print(f"serving: ingest {server.ingest_endpoint}, tags {publisher.endpoint}", flush=True)
            reason = server.run(stop)
            log.info("stopped (%s) after %d streams", reason, server.stats.opened)
    finally:
        publisher.close()
    return 0
