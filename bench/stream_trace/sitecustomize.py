"""Per-window step timings inside ``rt-tagger stream`` (``rt-tagger bench stream --trace``).

Python imports this module at start-up when its folder is on ``PYTHONPATH``; the bench puts it
there for the tagger process only. With ``BENCH_STREAM_TRACE=FILE`` set (not an ``RT_TAGGER_`` name: the settings refuse unknown ones) it wraps the steps a
window goes through (``StreamState.push``, ``run_due``, ``StreamState.complete``,
``Publisher.publish``) with clock reads, and at exit writes one row per tags message to FILE
(JSON, milliseconds):

- ``pickup``: the block's arrival in the ring until the push that completed the window began;
- ``push``: that push (the last block's front end, the window's hand-over);
- ``model``: the start of ``run_due`` until ``complete`` (the model call, batch of one);
- ``complete``: aggregation and the message;
- ``publish``: ``Publisher.publish`` (the send included, unlike the message's publish stage);
- ``end_s``: the window's end in stream time (the bench keeps the steady-state rows).

The wrappers cost a few clock reads a step. The scratch stream of the prewarm's rehearsal is
left out. Without the variable, nothing is wrapped.
"""

import atexit
import json
import os
import time

_OUT = os.environ.get("BENCH_STREAM_TRACE")


def _install(out: str) -> None:
    import rt_tagger.pipeline as pipeline
    import rt_tagger.publisher as publisher
    import rt_tagger.stream_state as stream_state

    rows: list[dict] = []
    now = {}  # the current window's clock reads
    clock, wall = time.perf_counter, time.time
    push, run_due = stream_state.StreamState.push, pipeline.run_due
    complete, publish = stream_state.StreamState.complete, publisher.Publisher.publish

    def traced_push(self, block, capture_wall=None, arrival_wall=None):
        if self.options.stream_id == "rehearsal":
            return push(self, block, capture_wall, arrival_wall)
        w, t = wall(), clock()
        due = push(self, block, capture_wall, arrival_wall)
        if due:
            now.clear()
            now.update(arrival=arrival_wall, push_wall=w, push=t, pushed=clock())
        return due

    def traced_run_due(streams, backend, frontend=None, while_waiting=None):
        now["run_due"] = clock()
        return run_due(streams, backend, frontend, while_waiting)

    def traced_complete(self, window, probabilities, inference_ms, embedding=None):
        if self.options.stream_id == "rehearsal":
            return complete(self, window, probabilities, inference_ms, embedding)
        now["complete"] = clock()
        msg = complete(self, window, probabilities, inference_ms, embedding)
        now["completed"] = clock()
        return msg

    def traced_publish(self, msg):
        if msg.kind != "tags" or msg.stream_id == "rehearsal" or "completed" not in now:
            return publish(self, msg)
        t = clock()
        ok = publish(self, msg)
        done = clock()
        if "run_due" in now and now.get("arrival") is not None:
            rows.append({
                "end_s": msg.window.end_s,
                "pickup": (now["push_wall"] - now["arrival"]) * 1e3,
                "push": (now["pushed"] - now["push"]) * 1e3,
                "model": (now["complete"] - now["run_due"]) * 1e3,
                "complete": (now["completed"] - now["complete"]) * 1e3,
                "publish": (done - t) * 1e3,
            })  # fmt: skip
        now.clear()
        return ok

    stream_state.StreamState.push, pipeline.run_due = traced_push, traced_run_due
    stream_state.StreamState.complete, publisher.Publisher.publish = traced_complete, traced_publish

    def write() -> None:
        with open(out, "w") as f:
            json.dump(rows, f)

    atexit.register(write)


if _OUT:
    _install(_OUT)
