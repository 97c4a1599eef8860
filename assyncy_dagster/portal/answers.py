"""The portal API's answers, checked and read into domain.py's visits.

A visits answer must be `{"data": {"visits": [...]}}`; anything else is a PortalDataError naming
the equipment. Inside it, one malformed visit must not stop every other EPN from syncing: it is
handed to `reject` (which names it) and skipped, never guessed at; a visit with an invalid EPN is
skipped too, so that it never reaches a path. Errors quote the portal's values shortened.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from ..domain import Person, Visit, aware
from ..epn import is_valid_epn
from .errors import PortalDataError

REQUIRED_VISIT_FIELDS = ("id", "epn", "start_time", "end_time")
_REPR_LIMIT = 60
_MESSAGE_LIMIT = 300


def short_repr(value: Any) -> str:
    """`repr(value)`, cut to a length an error message can quote."""
    text = repr(value)
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 3] + "..."


def meta_error(body: Any) -> str | None:
    """The portal's own explanation of a refusal (`meta.error_message`), shortened, or None."""
    if isinstance(body, dict) and isinstance(body.get("meta"), dict):
        message = body["meta"].get("error_message")
        if message:
            return str(message)[:_MESSAGE_LIMIT]
    return None


def access_token(body: Any) -> str | None:
    """The token of a token answer (`data.access_token`), or None when it holds none."""
    token = body["data"].get("access_token") if isinstance(body, dict) and isinstance(body.get("data"), dict) else None
    return token if isinstance(token, str) and token else None


def visits_of(
    body: Any,
    *,
    portal: str,
    equipment_id: int,
    reject: Callable[[str, str], None],
    logger: logging.Logger | logging.LoggerAdapter,
) -> list[Visit]:
    """The visits of one equipment's decoded visits answer. `portal` names the portal in errors;
    `reject(key, reason)` is told of each malformed visit (key: its EPN when it can be read, else
    "equipment N visit #i")."""
    where = f"equipment {equipment_id}"
    data = body.get("data") if isinstance(body, dict) else None
    raw_visits = data.get("visits") if isinstance(data, dict) else None
    if raw_visits is None:
        raise PortalDataError(f"{portal}: {where}: visits answer has no data.visits")
    if not isinstance(raw_visits, list):
        raise PortalDataError(f"{portal}: {where}: data.visits is a {type(raw_visits).__name__}, expected a list")
    visits = []
    for index, raw in enumerate(raw_visits):
        try:
            visit = _visit(raw, portal=portal, equipment_id=equipment_id, index=index, logger=logger)
        except PortalDataError as exc:
            # Its EPN, when it can be read, is held back by the caller (planning.visits_hold).
            epn = raw.get("epn") if isinstance(raw, dict) and is_valid_epn(raw.get("epn")) else None
            reject(epn or f"equipment {equipment_id} visit #{index}", str(exc))
            continue
        if visit is not None:
            visits.append(visit)
    return visits


def _visit(
    raw: Any, *, portal: str, equipment_id: int, index: int, logger: logging.Logger | logging.LoggerAdapter
) -> Visit | None:
    where = f"{portal}: equipment {equipment_id}: visit #{index}"
    if not isinstance(raw, dict):
        raise PortalDataError(f"{where} is a {type(raw).__name__}, expected an object")
    # The portal's own id and the EPN name the visit, so that an admin can chase it at the portal.
    names = [f"id {short_repr(raw['id'])}"] if raw.get("id") not in (None, "") else []
    names += [f"EPN {raw['epn']}"] if is_valid_epn(raw.get("epn")) else []
    where += f" ({', '.join(names)})" if names else ""
    missing = [name for name in REQUIRED_VISIT_FIELDS if raw.get(name) in (None, "")]
    if missing:
        raise PortalDataError(f"{where} lacks {', '.join(missing)}")
    epn = raw["epn"]
    if not is_valid_epn(epn):
        # One bad entry must not stop every other EPN from syncing; it must not reach a path either.
        logger.warning(f"equipment {equipment_id}: visit #{index} has an invalid EPN {short_repr(epn)}; skipping it")
        return None
    times = {}
    for name in ("start_time", "end_time"):
        value = raw[name]
        try:
            times[name] = aware(datetime.fromisoformat(value), name)
        except (TypeError, ValueError):
            raise PortalDataError(
                f"{where}: {name} {short_repr(value)} is not an ISO 8601 time with UTC offset"
            ) from None
    return Visit(
        id=raw["id"],
        epn=epn,
        start_time=times["start_time"],
        end_time=times["end_time"],
        principal_scientist=_person(raw.get("principal_scientist"), where, "principal_scientist"),
        data_scientists=_people(raw.get("data_scientists"), where),
        equipment_id=equipment_id,
    )


def _person(raw: Any, where: str, name: str) -> Person | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise PortalDataError(f"{where}: {name} is a {type(raw).__name__}, expected an object")
    return Person.from_dict(raw)


def _people(raw: Any, where: str) -> tuple[Person, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise PortalDataError(f"{where}: data_scientists is a {type(raw).__name__}, expected a list")
    people = (_person(p, where, f"data_scientists[{i}]") for i, p in enumerate(raw))
    return tuple(p for p in people if p is not None)
