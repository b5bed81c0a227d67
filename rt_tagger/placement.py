"""Where the consumer thread runs: one CPU core of its own and a real-time priority (opt-in).

A single stream's window goes through framing, the model and publishing in well under a
millisecond on a GPU host, so a few slow windows set its p99: the thread migrated to a core whose
caches hold none of its code, or a process of the same machine (a subscriber, a writer) took its
core at the wrong moment. Pinning the consumer to one core and giving it ``SCHED_FIFO`` priority
is what real-time audio programs (JACK, PipeWire) do against both. Both are off by default: they
take a core away from everything else (on a 2-core machine, from the audio server a microphone
needs: docs/engines.md has the numbers) and need privileges (``CAP_SYS_NICE`` or ``ulimit -r``,
and real-time time from the cgroup).

Linux only, and per thread: only the calling thread moves, so the source's audio thread, started
before, keeps every core. Both are undone on exit, since the caller's thread may live on.
"""

from __future__ import annotations

import contextlib
import os

from engines.errors import UserError

__all__ = ["consumer_placement"]


@contextlib.contextmanager
def consumer_placement(core: int | None, priority: int | None):
    """Run the body on ``core`` at ``SCHED_FIFO`` ``priority`` (either None: leave it as is).

    Raises:
        UserError: the core is not one this process may use, the platform has no such call, or
            the priority is refused (no privilege).
    """
    if core is None and priority is None:
        yield
        return
    if not hasattr(os, "sched_setaffinity") or not hasattr(os, "sched_setscheduler"):
        raise UserError("consumer_core / realtime_priority: this platform cannot place threads (Linux only)")
    allowed = os.sched_getaffinity(0)
    policy = os.sched_getscheduler(0)
    param = os.sched_getparam(0)
    if core is not None and core not in allowed:
        raise UserError(f"consumer_core={core}: not one of this process's cores {sorted(allowed)}")
    try:
        if core is not None:
            os.sched_setaffinity(0, {core})
        if priority is not None:
            try:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
            except PermissionError:
                raise UserError(
                    f"realtime_priority={priority}: not permitted (needs CAP_SYS_NICE or an rtprio "
                    "limit such as `ulimit -r 99`, and a cgroup that grants real-time time: "
                    "containers and VMs often grant none, even to root)"
                ) from None
        yield
    finally:
        if priority is not None:
            with contextlib.suppress(OSError):
                os.sched_setscheduler(0, policy, param)
        if core is not None:
            os.sched_setaffinity(0, allowed)
