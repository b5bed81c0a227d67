"""The consumer thread's core and real-time priority (``consumer_core``, ``realtime_priority``)."""

from __future__ import annotations

import os
import threading

import pytest

from engines.errors import UserError
from rt_tagger.pipeline import Pipeline, run_file
from rt_tagger.placement import consumer_placement
from rt_tagger.settings import load_settings

pytestmark = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity"), reason="thread placement is Linux only (os.sched_setaffinity)"
)


def _may_use_fifo() -> bool:
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except PermissionError:
        return False
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    return True


def test_pins_the_calling_thread_only_and_restores():
    allowed = os.sched_getaffinity(0)
    core = max(allowed)
    seen_by_other = []
    with consumer_placement(core, None):
        assert os.sched_getaffinity(0) == {core}
        t = threading.Thread(target=lambda: seen_by_other.append(os.sched_getaffinity(0)))
        t.start()
        t.join()
    assert os.sched_getaffinity(0) == allowed
    # a thread started meanwhile inherits the pin (why the pipeline places the consumer only
    # after the source's threads exist)
    assert seen_by_other == [{core}]


def test_realtime_priority_is_set_and_undone_or_refused_in_one_line():
    if _may_use_fifo():
        with consumer_placement(None, 10):
            assert os.sched_getscheduler(0) == os.SCHED_FIFO
            assert os.sched_getparam(0).sched_priority == 10
        assert os.sched_getscheduler(0) == os.SCHED_OTHER
    else:
        with pytest.raises(UserError, match=r"realtime_priority=10: not permitted"):
            with consumer_placement(None, 10):
                pass
        assert os.sched_getscheduler(0) == os.SCHED_OTHER


def test_a_core_outside_the_process_is_refused():
    bad = max(os.sched_getaffinity(0)) + 1000
    with pytest.raises(UserError, match=rf"consumer_core={bad}: not one of this process's cores"):
        with consumer_placement(bad, None):
            pass


def test_the_pipeline_runs_its_consumer_there(sensitive_bundle, short_wav):
    before = os.sched_getaffinity(0)
    core = max(before)
    settings = load_settings(hop_seconds=0.5, backend="torch-cpu", consumer_core=core)
    seen = []
    with Pipeline(sensitive_bundle, settings) as pipe:
        pipe.on_message = lambda msg: seen.append(os.sched_getaffinity(0))  # called on the consumer
        res = run_file(short_wav, sensitive_bundle, pipeline=pipe)
        assert res.windows and len(seen) == len(res.windows) + 1  # + the end message
        assert all(s == {core} for s in seen[:-1])
        assert os.sched_getaffinity(0) == before  # undone: run_file ran on this thread
        pipe.settings = load_settings(hop_seconds=0.5, backend="torch-cpu", consumer_core=core + 1000)
        with pytest.raises(UserError, match="not one of this process's cores"):
            run_file(short_wav, sensitive_bundle, pipeline=pipe)
