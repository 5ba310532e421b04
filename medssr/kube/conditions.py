"""Reading an object's state from its ``.status``: the state readers of every kind return an ObjectState."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ObjectState:
    """What an object's status says, in its kind's own words (PyTorchJob: Succeeded, TrainJob: Complete, ...)."""

    phase: str
    reason: str = ""
    message: str = ""

    @property
    def detail(self) -> str:
        return ": ".join(part for part in (self.reason, self.message) if part)


def parse_time(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def status_of(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("status") or {}


def conditions_of(obj: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list(status_of(obj).get("conditions") or [])


def true_conditions(obj: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The object's conditions with status True, by type."""
    return {c.get("type"): c for c in conditions_of(obj) if str(c.get("status")) == "True"}


def state_from(phase: str, condition: Mapping[str, Any]) -> ObjectState:
    return ObjectState(phase, str(condition.get("reason") or ""), str(condition.get("message") or ""))
