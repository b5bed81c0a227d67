"""The runtime subcommands of ``rt-tagger``: devices, listen, tag, embed, stream, subscribe, demo.

``rt_tagger.cli`` turns :class:`~engines.errors.UserError` into one line on stderr and a non-zero
exit (tracebacks with ``--debug``); commands here only raise. Settings come from
``configs/runtime.toml``, the ``--config`` file, ``RT_TAGGER_*`` variables and flags, in that order.

Modules: :mod:`.parser` (every option), :mod:`.settings_from_args` (flags → settings),
:mod:`.console` (log silencing, summaries), :mod:`.live` (devices, listen, stream),
:mod:`.tag` (offline tagging, result documents, taggrams), :mod:`.embed` (embeddings of files),
:mod:`.demo`; ``subscribe`` is
:mod:`rt_tagger.subscribe`.
"""

from __future__ import annotations

from rt_tagger import subscribe
from rt_tagger.commands.console import quiet_logs
from rt_tagger.commands.demo import cmd_demo
from rt_tagger.commands.embed import cmd_embed
from rt_tagger.commands.live import cmd_devices, cmd_listen, cmd_stream
from rt_tagger.commands.parser import build_parser
from rt_tagger.commands.serve import cmd_serve
from rt_tagger.commands.tag import cmd_tag

__all__ = ["COMMANDS", "build_parser", "main"]

COMMANDS = {
    "devices": cmd_devices,
    "listen": cmd_listen,
    "tag": cmd_tag,
    "embed": cmd_embed,
    "stream": cmd_stream,
    "serve": cmd_serve,
    "subscribe": subscribe.main_from_args,
    "demo": cmd_demo,
}


def main(argv: list[str], extra_commands: list[str] | None = None) -> int:
    """Parse ``argv`` and run one runtime command; user errors propagate as :class:`UserError`."""
    parser = build_parser(extra_commands)
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    args = parser.parse_args(argv)
    quiet_logs(getattr(args, "verbose", False) or args.command in ("listen", "stream", "demo", "serve"))
    return COMMANDS[args.command](args)
