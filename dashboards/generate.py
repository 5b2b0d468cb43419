"""Every generated file (dashboards, alert rules, docs/metrics.md), keyed by its path in the repository."""

from __future__ import annotations

from pathlib import Path

from . import alert_tests, alerts, metrics_doc, overview, stuck

ROOT = Path(__file__).resolve().parent.parent
RULES = Path("deploy/prometheus/rules/shmq.rules.yml")
RULE_TESTS = Path("deploy/prometheus/rules/tests/shmq.rules.test.yml")
PROMETHEUS_RULE = Path("deploy/kubernetes/prometheusrule.yaml")
DASHBOARDS = {Path("dashboards/shmq-overview.json"): overview, Path("dashboards/shmq-why-stuck.json"): stuck}


def outputs() -> dict[Path, str]:
    """{path relative to the repository root: the text the code generates for it}."""
    files = {path: module.render() for path, module in DASHBOARDS.items()}
    files[RULES] = alerts.render()
    files[RULE_TESTS] = alert_tests.render(str(Path("..") / RULES.name))
    files[PROMETHEUS_RULE] = alerts.render_prometheus_rule()
    files[metrics_doc.PATH] = metrics_doc.render()
    return files


def stale(root: Path = ROOT) -> list[Path]:
    """Generated files whose committed text differs from what the code generates now."""
    return [path for path, text in outputs().items()
            if not (root / path).is_file() or (root / path).read_text() != text]


def write(root: Path = ROOT) -> list[Path]:
    """Write every generated file; returns the ones that changed."""
    changed = stale(root)
    for path, text in outputs().items():
        if path in changed:
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_text(text)
    return changed
