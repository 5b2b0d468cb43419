"""Telemetry for shmq: Prometheus metrics, OpenTelemetry traces and the watchdog.

Everything here reads queues through ``shmq.stats`` (read-only mappings) or
``shmq.hooks``; nothing in ``shmq`` imports this package.
"""

from .collector import ShmqCollector
from .exporter import serve

__all__ = ["ShmqCollector", "serve"]
