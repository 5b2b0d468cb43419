"""Telemetry for shmq: Prometheus metrics, OpenTelemetry traces and the watchdog.

Everything here reads queues through ``shmq.stats`` (read-only mappings) or
``shmq.hooks``; nothing in ``shmq`` imports this package.
"""

from __future__ import annotations

import importlib

__all__ = ["ShmqCollector", "serve"]

_EXPORTS = {"ShmqCollector": ".collector", "serve": ".exporter"}


def __getattr__(name: str):
    # Imported on first use: the dashboards and alert rules import shmq.telemetry.names and
    # must not need prometheus_client for it.
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
