"""The domain's types: a visit (an EPN's beamtime on one piece of equipment), the people named on it,
and what the portal said of a window. Plain data and the rules on it, no I/O.

The portal client builds them from the API's answers (portal/answers.py); planning, the report, the
canary, the alerts and the assets read them. No HTTP and no Dagster here, so that a rule on
visits never loads the portal's client.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any


@dataclass(frozen=True)
class Person:
    """A scientist as the portal lists them."""

    first_names: str
    last_name: str
    email: str

    @property
    def full_name(self) -> str:
        return " ".join(part for part in (self.first_names.strip(), self.last_name.strip()) if part)

    def to_dict(self) -> dict[str, str]:
        return {"first_names": self.first_names, "last_name": self.last_name, "email": self.email}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Person:
        return cls(
            first_names=_text(data.get("first_names")),
            last_name=_text(data.get("last_name")),
            email=_text(data.get("email")),
        )


@dataclass(frozen=True)
class Visit:
    """One scheduled beamtime: an EPN on one piece of equipment, between two instants."""

    id: int | str
    epn: str
    start_time: datetime
    end_time: datetime
    principal_scientist: Person | None
    data_scientists: tuple[Person, ...] = field(default_factory=tuple)
    equipment_id: int = 0

    def has_ended(self, now: datetime) -> bool:
        """True once the beamtime is over, so that its data is complete."""
        return self.end_time <= now

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form (ISO 8601 times with offset); `Visit.from_dict` reads it back."""
        return {
            "id": self.id,
            "epn": self.epn,
            "start_time": self.start_time.isoformat(),
            "end_time": self.end_time.isoformat(),
            "principal_scientist": self.principal_scientist.to_dict() if self.principal_scientist else None,
            "data_scientists": [p.to_dict() for p in self.data_scientists],
            "equipment_id": self.equipment_id,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Visit:
        principal = data.get("principal_scientist")
        return cls(
            id=data["id"],
            epn=data["epn"],
            start_time=aware(datetime.fromisoformat(data["start_time"]), "start_time"),
            end_time=aware(datetime.fromisoformat(data["end_time"]), "end_time"),
            principal_scientist=Person.from_dict(principal) if principal else None,
            data_scientists=tuple(Person.from_dict(p) for p in data.get("data_scientists") or ()),
            equipment_id=int(data.get("equipment_id", 0)),
        )


@dataclass(frozen=True)
class VisitsAnswer:
    """What the portal answered for a window: the visits it sent whole, and the ones it sent malformed.

    `malformed` maps the EPN of each malformed visit (or "equipment N visit #i" when not even its
    EPN can be read) to why, naming each such visit. A malformed visit of an EPN holds that EPN
    back (planning.visits_hold): its end cannot be read, so the EPN's other visits cannot say that
    its beamtime is over."""

    visits: list[Visit]
    malformed: dict[str, str] = field(default_factory=dict)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} {value.isoformat()} has no UTC offset")
    return value


def visit_window(now: datetime, day_range: float) -> tuple[datetime, datetime]:
    """The (since, until) window of the last `day_range` days up to `now` (config `visit-day-range`)."""
    return now - timedelta(days=day_range), now


def visits_by_epn(visits: Iterable[Visit]) -> dict[str, list[Visit]]:
    """Group visits by EPN, keeping their order (an EPN may span several visits or beamlines)."""
    grouped: dict[str, list[Visit]] = {}
    for visit in visits:
        grouped.setdefault(visit.epn, []).append(visit)
    return grouped
