"""``rt-tagger demo``: tag the bundled clip and show, in a separate subscriber process, exactly
what another application receives. Fails (non-zero) if that subscriber received nothing."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from engines.errors import UserError
from rt_tagger.commands.settings_from_args import settings_from_args

__all__ = ["cmd_demo"]

DEMO_CLIP = Path(__file__).resolve().parents[1] / "demo" / "demo.ogg"
CONNECT_TIMEOUT_S = 15.0


def _echo_and_count(stream, counts: dict) -> None:
    """Copy the subscriber's lines to our stdout; count the message lines (not its notes)."""
    for line in stream:
        sys.stdout.write(line)
        sys.stdout.flush()
        if not line.startswith(("-- ", "!! ")):
            counts["messages"] += 1


def cmd_demo(args) -> int:
    from rt_tagger.bundled_model import load_bundle
    from rt_tagger.pipeline import Pipeline
    from rt_tagger.publisher import Publisher
    from rt_tagger.sources import FileSource

    st = settings_from_args(args)
    bundle = load_bundle(st.bundle)
    endpoint = args.endpoint or st.publish.endpoint
    print(
        f"rt-tagger demo: {DEMO_CLIP.name} (see rt_tagger/demo/SOURCE.md), model {bundle.manifest.name}",
        flush=True,
    )
    counts = {"messages": 0}
    # The model warms up (first run: an ONNX export) before the subscriber starts, so that the
    # subscriber's timeout counts from when messages can flow.
    with (
        Publisher(endpoint, sndhwm=st.publish.sndhwm) as pub,
        Pipeline(bundle, st, publisher=pub, keep_windows=True) as pipe,
    ):
        # The subscriber is a separate OS process, exactly as another application would be.
        cmd = [sys.executable, "-m", "rt_tagger.subscribe", "--endpoint", pub.endpoint, "--timeout", "10"]
        print(
            f"publishing on {pub.endpoint}; subscriber process: rt-tagger subscribe --endpoint {pub.endpoint}",
            flush=True,
        )
        sub = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=sys.stderr, text=True, bufsize=1)
        echo = threading.Thread(target=_echo_and_count, args=(sub.stdout, counts), daemon=True)
        echo.start()
        try:
            if not pub.wait_for_subscriber(CONNECT_TIMEOUT_S):
                raise UserError(f"the demo subscriber did not connect within {CONNECT_TIMEOUT_S:g} s")
            src = FileSource(DEMO_CLIP, block_size=st.audio.block_size, realtime=not args.fast)
            res = pipe.run(src)
            time.sleep(0.5)  # let the last messages reach the subscriber
        finally:
            if sub.poll() is None:
                sub.send_signal(signal.SIGINT)  # it prints its summary and exits 0
            try:
                sub.wait(timeout=5)
            except subprocess.TimeoutExpired:
                sub.kill()
            echo.join(5)
    from rt_tagger.commands.tag import file_summary

    print(
        f"rt-tagger demo: {res.messages} messages published; whole clip: {file_summary(res, bundle, 5)}",
        flush=True,
    )
    if counts["messages"] == 0:
        raise UserError(f"the demo subscriber received none of the {res.messages} messages published")
    return 0
