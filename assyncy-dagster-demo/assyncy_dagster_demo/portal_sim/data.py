"""The simulator's data: the data file (YAML or JSON) read, its times resolved (`now-3d` or ISO 8601
with offset), and each equipment's account and visits ready to serve, every visit's JSON encoded once.
A mistake in the file is a SimulatorDataError naming the file and the entry."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any

import yaml

from assyncy_dagster.statefiles import load_yaml

DEFAULT_TOKEN_TTL = 3600
DEFAULT_TIMEZONE = "Australia/Melbourne"
ACCOUNT_FIELDS = ("username", "password", "client_name", "client_password")
_RELATIVE = re.compile(r"now((?:\s*[+-]\s*\d+(?:\.\d+)?\s*[wdhms])*)")
_RELATIVE_TERM = re.compile(r"([+-])\s*(\d+(?:\.\d+)?)\s*([wdhms])")
_UNITS = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes", "s": "seconds"}


class SimulatorDataError(ValueError):
    """The simulator's data file is wrong; the message names the file and the entry."""


def zone(name: str | None) -> tzinfo:
    if not name or name.upper() == "UTC":
        return UTC
    try:
        from zoneinfo import ZoneInfo

        return ZoneInfo(name)
    except Exception as exc:  # zoneinfo raises several kinds; all mean "unknown here"
        raise SimulatorDataError(f"timezone {name!r} is not known on this machine ({exc})") from None


def resolve_time(value: Any, now: datetime) -> datetime | None:
    """A data-file time as an aware datetime: `now`, `now-3d`, ISO 8601 with offset; else None."""
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else None
    if not isinstance(value, str):
        return None
    text = value.strip()
    match = _RELATIVE.fullmatch(text)
    if match:
        # Count in UTC: elapsed time, not wall-clock time across a daylight-saving change.
        moment = now.astimezone(UTC)
        for sign, amount, unit in _RELATIVE_TERM.findall(match.group(1)):
            delta = timedelta(**{_UNITS[unit]: float(amount)})
            moment = moment + delta if sign == "+" else moment - delta
        return moment.astimezone(now.tzinfo)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def load_data(source: dict[str, Any] | str | Path) -> tuple[dict[str, Any], str]:
    """The data as a dict, and a name for messages (the file name, or `<data>`)."""
    if isinstance(source, dict):
        return source, "<data>"
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SimulatorDataError(f"{path}: cannot read the visits file: {exc.strerror or exc}") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else load_yaml(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise SimulatorDataError(f"{path}: not valid YAML or JSON: {exc}") from None
    if not isinstance(data, dict):
        raise SimulatorDataError(f"{path}: expected a mapping with an 'equipment' list at the top level")
    return data, path.name


class ServedVisit:
    """A visit ready to serve: its instants for filtering and its JSON, encoded once."""

    __slots__ = ("allocation_id", "encoded", "end", "epn", "equipment_id", "start")

    def __init__(self, start, end, epn, allocation_id, equipment_id, encoded):
        self.start, self.end, self.epn = start, end, epn
        self.allocation_id, self.equipment_id, self.encoded = allocation_id, equipment_id, encoded

    def overlaps(self, since: datetime | None, until: datetime | None) -> bool:
        if self.start is None or self.end is None:
            return True  # a broken visit is served as it is, for clients to cope with
        return (until is None or self.start <= until) and (since is None or self.end >= since)


class Equipment:
    __slots__ = ("account", "id", "name", "visits")

    def __init__(self, id, name, account, visits):
        self.id, self.name, self.account, self.visits = id, name, account, visits


def _render_time(value: Any, moment: datetime | None) -> Any:
    if isinstance(value, str) and not _RELATIVE.fullmatch(value.strip()):
        return value  # absolute text is served exactly as written
    if moment is not None:
        return moment.isoformat()
    return value.isoformat() if isinstance(value, datetime) else value


def base_digits(epn: Any) -> str | None:
    match = re.match(r"[0-9]+", epn) if isinstance(epn, str) else None
    return match.group(0) if match else None


def parse_equipment(data: dict[str, Any], name: str, now: datetime, strict: bool) -> dict[int, Equipment]:
    items = data.get("equipment")
    if not isinstance(items, list) or not items:
        raise SimulatorDataError(f"{name}: 'equipment' must be a non-empty list")
    result: dict[int, Equipment] = {}
    for i, item in enumerate(items):
        where = f"{name}: equipment[{i}]"
        if not isinstance(item, dict):
            raise SimulatorDataError(f"{where}: expected a mapping")
        if not isinstance(item.get("id"), int) or isinstance(item.get("id"), bool):
            raise SimulatorDataError(f"{where}.id: expected an integer, got {item.get('id')!r}")
        for key in ACCOUNT_FIELDS:
            if not isinstance(item.get(key), str) or not item[key]:
                raise SimulatorDataError(f"{where}.{key}: missing or not a string")
        if item["id"] in result:
            raise SimulatorDataError(f"{where}.id: equipment {item['id']} is listed twice")
        raw_visits = item.get("visits") or []
        if not isinstance(raw_visits, list):
            raise SimulatorDataError(f"{where}.visits: expected a list")
        visits = []
        for j, raw in enumerate(raw_visits):
            visits.append(_parse_visit(raw, f"{where}.visits[{j}]", item["id"], now, strict))
        result[item["id"]] = Equipment(
            item["id"],
            str(item.get("name") or f"Equipment {item['id']}"),
            tuple(item[k] for k in ACCOUNT_FIELDS),
            visits,
        )
    return result


def _parse_visit(raw: Any, where: str, equipment_id: int, now: datetime, strict: bool) -> ServedVisit:
    if not isinstance(raw, dict):
        if strict:
            raise SimulatorDataError(f"{where}: expected a mapping")
        return ServedVisit(None, None, None, None, equipment_id, json.dumps(raw, default=str))
    visit = dict(raw)
    moments = {}
    for key in ("start_time", "end_time"):
        moments[key] = resolve_time(visit.get(key), now)
        if strict and moments[key] is None:
            raise SimulatorDataError(
                f"{where}.{key}: {visit.get(key)!r} is neither ISO 8601 with offset nor now[+-]N[wdhms]"
            )
        if key in visit:
            visit[key] = _render_time(visit[key], moments[key])
    if strict:
        for key in ("id", "epn"):
            if visit.get(key) in (None, ""):
                raise SimulatorDataError(f"{where}.{key}: missing")
    visit.setdefault("principal_scientist", None)
    visit.setdefault("data_scientists", [])
    allocation = visit.get("proposal_allocation_id")
    if allocation is None:
        base = base_digits(visit.get("epn"))
        allocation = int(base) if base else None
    return ServedVisit(
        moments["start_time"],
        moments["end_time"],
        visit.get("epn"),
        allocation,
        equipment_id,
        json.dumps(visit, ensure_ascii=False, default=str),
    )


def equipment_credentials(source: dict[str, Any] | str | Path) -> list[dict[str, Any]]:
    """Each equipment's `id` and account fields, as config.yml's `equipment` list wants them."""
    data, _ = load_data(source)
    return [{"id": item["id"], **{k: item[k] for k in ACCOUNT_FIELDS}} for item in data["equipment"]]
