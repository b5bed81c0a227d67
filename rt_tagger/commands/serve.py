"""``rt-tagger serve``: many streams in over the ingest protocol, tags out over ZeroMQ.

Runs until SIGINT/SIGTERM (or ``--duration``); every open stream then gets its ``end`` message.
See :mod:`rt_tagger.serve` for the loop, :mod:`rt_tagger.cluster` for ``--ray`` and
docs/ingest.md for the protocol.
"""

from __future__ import annotations

import json
import logging
import threading

from engines.errors import UserError
from rt_tagger.commands.live import stop_on_signals
from rt_tagger.commands.settings_from_args import settings_from_args

__all__ = ["cmd_serve"]

log = logging.getLogger(__name__)


def cmd_serve(args) -> int:
    from rt_tagger.publisher import Publisher
    from rt_tagger.serve import bind_ingest

    stop = stop_on_signals()
    serve = {
        "ingest": args.ingest,
        "max_streams": args.max_streams,
        "max_batch": args.max_batch,
        "max_batch_delay_ms": args.max_batch_delay_ms,
        "buffer_s": args.buffer_s,
        "idle_timeout_s": args.idle_timeout,
        "stats_interval_s": args.stats_interval,
        "processes": args.processes,
        "frontend": args.frontend,
    }
    st = settings_from_args(args, serve={k: v for k, v in serve.items() if v is not None})
    if args.duration is not None:
        threading.Timer(args.duration, stop.request, args=("duration",)).start()
    if args.ray is not None:
        if st.serve.processes > 1:
            raise UserError("--processes and --ray do not combine: under --ray, run more shards (--shards)")
        return _serve_ray(args, st, stop)
    if st.serve.processes > 1:
        return _serve_processes(args, st, stop)
    from rt_tagger.bundled_model import load_bundle
    from rt_tagger.pipeline import Pipeline
    from rt_tagger.serve import Server

    ingest = bind_ingest(st.serve)  # a busy port or bad endpoint fails before the model loads
    bundle = load_bundle(st.bundle)
    publisher = Publisher.from_settings(st.publish)
    try:
        with Pipeline(
            bundle, st, publisher=publisher, keep_windows=False, max_batch=st.serve.max_batch
        ) as pipe:
            server = Server(pipe, publisher, st.serve, ingest_socket=ingest)
            if not args.quiet:
                print(f"serving: ingest {server.ingest_endpoint}, tags {publisher.endpoint}", flush=True)
            reason = server.run(stop)
            log.info("stopped (%s) after %d streams", reason, server.stats.opened)
    finally:
        publisher.close()
    return 0


def _serve_processes(args, st, stop) -> int:
    from rt_tagger.processes import ProcessServer

    server = ProcessServer(st, st.serve.processes)
    try:
        server.wait_ready(timeout_s=600)
    except BaseException:
        stop.request("failed")
        server.run(stop)  # stops the children and closes the sockets
        raise
    if not args.quiet:
        print(
            f"serving with {st.serve.processes} processes: ingest {server.ingest_endpoint}, tags {server.endpoint}",
            flush=True,
        )
    reason = server.run(stop)
    log.info("stopped (%s)", reason)
    return 0


def _serve_ray(args, st, stop) -> int:
    try:
        import ray
    except ImportError:
        raise UserError("--ray needs Ray: pip install 'rt-tagger[ray]'") from None
    from rt_tagger.cluster import Gateway
    from rt_tagger.publisher import Publisher

    try:
        resources = json.loads(args.shard_resources) if args.shard_resources else {}
    except json.JSONDecodeError as e:
        raise UserError(f"--shard-resources is not JSON: {e}") from None
    try:
        ray.init(address=args.ray, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise UserError(f"cannot join the Ray cluster at {args.ray}: {str(e).splitlines()[0]}") from None
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus:
        options = {"num_gpus": 1, "num_cpus": 1}
        shards = args.shards or gpus
    else:
        options = {"num_cpus": args.shard_cpus}
        shards = args.shards or max(1, int(ray.cluster_resources().get("CPU", 1)) // args.shard_cpus)
    if resources:
        options["resources"] = resources
    publisher = Publisher.from_settings(st.publish)
    try:
        gateway = Gateway(st, shards, options, shard_timeout_s=args.shard_timeout, publisher=publisher)
        gateway.wait_ready(timeout_s=600)
        if not args.quiet:
            print(
                f"serving on Ray ({shards} shards): ingest {st.serve.ingest}, tags {publisher.endpoint}",
                flush=True,
            )
        gateway.run(stop)
    finally:
        publisher.close()
        ray.shutdown()
    return 0
