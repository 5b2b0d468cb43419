"""``shmq bench`` (also ``python -m shmq.cli.bench``): shmq and its peers side by side, in one markdown table.

Modules: ``workloads`` (what is sent, how much), ``configs`` (shmq configurations
and the ``--compare`` spec), ``peers`` (every transport behind one interface),
``trial`` (one row: writer, readers, supervisor), ``limits`` (memcpy, ping-pong,
futex floors), ``soak`` (``--soak``), ``watchdog`` (``--watchdog``: the
watchdog's detection latency, lead time and CPU), ``tracing_hooks`` (the tracing
configurations of ``--compare``), ``sidecar`` and ``otlp_sink`` (``--compare
sidecar=traces``: a tracing exporter beside a row), ``table`` (the figures and their markdown) and
``command`` (the command line).
"""

from .command import add_arguments, main

__all__ = ["add_arguments", "main"]
