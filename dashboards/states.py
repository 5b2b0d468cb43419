"""How participant states and alert flags look on the dashboards: {value: (text, colour)}."""

from __future__ import annotations

from shmq.layout import ParticipantState as S

from .promql import state_value

_COLOURS = {
    S.PENDING: "text",
    S.IDLE: "green",
    S.BUSY: "blue",
    S.WAITING_READ: "super-light-green",  # the normal state of a reader on an idle queue
    S.WAITING_WRITE: "orange",  # the writer is held back by a full ring
    S.CLOSED: "text",
    S.EVICTED: "red",
}
if set(_COLOURS) != set(S):
    raise RuntimeError(f"participant states without a dashboard colour: {set(S) - set(_COLOURS)}")

# Keyed by the ParticipantState value that promql.state_code() produces.
STATE_CODES = {int(s): (state_value(s), colour) for s, colour in _COLOURS.items()}
ALERT_CODES = {0: ("clear", "green"), 1: ("ALERT", "red")}
