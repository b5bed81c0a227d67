"""What the runtime commands print on the console besides results: quiet library logs, summaries."""

from __future__ import annotations

import logging
import sys

__all__ = ["print_summary", "quiet_logs"]


def quiet_logs(verbose: bool) -> None:
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


def print_summary(res, source, out=sys.stderr) -> None:
    """One line at the end of a live run: messages, duration, source and every non-zero drop."""
    c = res.counters
    lost = {k: v for k, v in c.items() if v and k != "ring_overflow_events"}
    print(
        f"rt-tagger: {res.messages} messages ({res.heartbeats} heartbeats) over {res.duration_s:.1f} s "
        f"from {source.describe()}; drops: {lost or 'none'}",
        file=out,
    )
