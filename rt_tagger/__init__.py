"""rt_tagger: the streaming path — audio source → ring buffer → numba log-mel → backend →
rolling tags → ZeroMQ.

Entry points: the ``rt-tagger`` CLI (:mod:`rt_tagger.cli`, runtime commands in
:mod:`rt_tagger.commands`), :class:`rt_tagger.pipeline.Pipeline` and
:func:`rt_tagger.pipeline.run_file` for programs and bench/. Imports are lazy so ``import
rt_tagger`` stays light.
"""

__version__ = "0.1.0"
