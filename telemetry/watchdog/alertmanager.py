"""Posting the watchdog's alerts to Alertmanager (API v2, ``POST /api/v2/alerts``).

A raise posts the alert with ``startsAt``; a clear posts it again with ``endsAt``
set, which is how Alertmanager learns it resolved. Alertmanager also resolves
an alert on its own when nobody re-sends it for ``resolve_timeout`` (5 minutes
by default), so active alerts are re-posted every `resend_s`, as Prometheus does.

Posting runs in its own thread: a slow or absent Alertmanager never delays a
poll. Failed posts are retried with backoff; the watchdog's events and metrics
do not depend on them.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request

from .. import names as N

log = logging.getLogger("shmq.watchdog")

SEVERITY = {
    N.RULE_DEAD: "critical",
    N.RULE_READER_STALLED: "critical",
    N.RULE_WRITER_BLOCKED: "critical",
    N.RULE_LIVELOCK: "critical",
    N.RULE_FREEZE_RISK: "warning",  # a prediction: the writer has not blocked yet
}
MAX_PENDING = 1000  # posts kept for retry while Alertmanager is unreachable
STACK_ANNOTATION_CHARS = 4000


def payload(event: dict, generator_url: str) -> dict:
    """One postable alert from a raise or clear event."""
    labels = {
        "alertname": N.ALERTNAMES[event["rule"]],
        N.LABEL_QUEUE: event["queue"],
        N.LABEL_RULE: event["rule"],
        N.LABEL_ROLE: event["role"],
        "cause": event["cause"],
        "severity": SEVERITY[event["rule"]],
    }
    if event["reader"] is not None:
        labels[N.LABEL_READER] = str(event["reader"])
    annotations = {"summary": event["message"], N.LABEL_PID: str(event["pid"]), "shm_name": event["shm_name"]}
    if event.get("flight_summary"):
        annotations["flight"] = event["flight_summary"]
    if event.get("stack"):
        annotations["stack"] = event["stack"][:STACK_ANNOTATION_CHARS]
    elif event.get("stack_note"):
        annotations["stack"] = event["stack_note"]
    alert = {"labels": labels, "annotations": annotations, "startsAt": event["started_iso"]}
    if generator_url:
        alert["generatorURL"] = generator_url
    if event["event"] == "clear":
        alert["endsAt"] = event["time_iso"]
    return alert


class AlertmanagerClient:
    """Sends raise and clear events to one Alertmanager, from a background thread."""

    def __init__(self, url: str, *, generator_url: str = "", resend_s: float = 30.0, timeout_s: float = 5.0) -> None:
        self.url = url.rstrip("/") + "/api/v2/alerts"
        self._generator_url = generator_url
        self._resend_s = resend_s
        self._timeout_s = timeout_s
        self._active: dict[tuple, dict] = {}
        self._pending: list[dict] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="shmq-watchdog-alertmanager", daemon=True)
        self._thread.start()

    def notify(self, event: dict) -> None:
        alert = payload(event, self._generator_url)
        key = tuple(sorted(alert["labels"].items()))
        with self._cond:
            if event["event"] == "raise":
                self._active[key] = alert
            else:
                self._active.pop(key, None)
            self._pending.append(alert)
            del self._pending[:-MAX_PENDING]
            self._cond.notify()

    def _run(self) -> None:
        backoff = 0.0
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._stopping, timeout=backoff or self._resend_s)
                if self._stopping and (not self._pending or backoff):
                    return
                batch = self._pending or list(self._active.values())  # nothing new: re-send what is active
                self._pending = []
            if not batch:
                continue
            if self._post(batch):
                backoff = 0.0
            else:
                with self._cond:
                    self._pending[:0] = [a for a in batch if "endsAt" in a or a in self._active.values()]
                backoff = min(max(2 * backoff, 0.5), 30.0)

    def _post(self, alerts: list[dict]) -> bool:
        request = urllib.request.Request(self.url, data=json.dumps(alerts).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:
                response.read()
            return True
        except (urllib.error.URLError, OSError) as e:
            log.warning("shmq watchdog: could not post %d alerts to %s: %s", len(alerts), self.url, e)
            return False

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is pending (one attempt), then stop."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout_s)
