"""Monitoring as code: the Grafana dashboards and Prometheus alert rules for shmq.

Every query is built from the metric names in ``shmq.telemetry.names``, so the
dashboards, the rules and the collector cannot drift apart. ``python -m dashboards``
regenerates the committed files (``dashboards/*.json``,
``deploy/prometheus/rules/shmq.rules.yml`` and its promtool tests);
``python -m dashboards --check`` fails when they are stale.
"""
