"""Synthetic portal data at scale for the benchmarks: many visits for the portal simulator.

from visit_data import generate_visits   # benchmarks import their neighbours by name
"""

from __future__ import annotations

import random
import re
import unicodedata
from datetime import datetime, timedelta
from typing import Any

from assyncy_dagster_demo.portal_sim import DEFAULT_TOKEN_TTL

_FIRST_NAMES = (
    "Olivia",
    "Liam",
    "Charlotte",
    "Noah",
    "Amelia",
    "Jack",
    "Isla",
    "William",
    "Mia",
    "Oliver",
    "Ava",
    "Thomas",
    "Grace",
    "James",
    "Chloe",
    "Lucas",
    "Zoe",
    "Ethan",
    "Ruby",
    "Henry",
    "Wei",
    "Priya",
    "Mohammed",
    "Siobhán",
    "Nguyen Thi",
    "Aroha",
    "Rahul",
    "Yuki",
    "Fatima",
    "José",
)
_LAST_NAMES = (
    "Smith",
    "Jones",
    "Williams",
    "Brown",
    "Wilson",
    "Taylor",
    "Nguyen",
    "Johnson",
    "Martin",
    "White",
    "Anderson",
    "Walker",
    "Thompson",
    "Harris",
    "Lee",
    "Ryan",
    "Robinson",
    "Kelly",
    "King",
    "Davis",
    "O'Brien",
    "Chen",
    "Patel",
    "Singh",
    "Zhang",
    "Papadopoulos",
    "Kowalski",
    "MacDonald",
    "Te Whare",
    "García",
)
_DOMAINS = ("monash.edu", "unimelb.edu.au", "anu.edu.au", "uq.edu.au", "csiro.au", "wehi.edu.au")


def _ascii_lower(text: str) -> str:
    return re.sub(r"[^a-z]", "", unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower())


def _person(rng: random.Random) -> dict[str, str]:
    first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
    email = f"{_ascii_lower(first.split()[0])}.{_ascii_lower(last)}@{rng.choice(_DOMAINS)}"
    return {"first_names": first, "last_name": last, "email": email}


def generate_visits(
    n: int, equipment_ids: tuple[int, ...] | list[int] = (23, 24), *, seed: int = 0, now: datetime | None = None
) -> dict[str, Any]:
    """Simulator data with `n` visits spread over `equipment_ids`, for benchmarks and load tests.

    EPNs are unique and valid (`10000a`, `10000b`, ...); visits fall in the last
    180 days, about one in twenty still running. Times are relative (`now-...m`)
    unless `now` is given, then absolute. Each equipment `E` has the account
    `user-E` / `password-E` / `client-E` / `client-password-E`.
    """
    if not equipment_ids:
        raise ValueError("generate_visits needs at least one equipment id")
    rng = random.Random(seed)
    equipment = [
        {
            "id": eid,
            "username": f"user-{eid}",
            "password": f"password-{eid}",
            "client_name": f"client-{eid}",
            "client_password": f"client-password-{eid}",
            "visits": [],
        }
        for eid in equipment_ids
    ]
    letters = "abcd"
    for i in range(n):
        start_minutes = rng.randint(60, 180 * 24 * 60)
        length_minutes = rng.randint(8 * 60, 72 * 60)
        if rng.random() < 0.05:  # still running
            start_minutes = rng.randint(60, 24 * 60)
        end_minutes = start_minutes - length_minutes
        if now is None:
            start = f"now-{start_minutes}m"
            end = f"now-{end_minutes}m" if end_minutes >= 0 else f"now+{-end_minutes}m"
        else:
            start = (now - timedelta(minutes=start_minutes)).isoformat()
            end = (now - timedelta(minutes=end_minutes)).isoformat()
        equipment[i % len(equipment)]["visits"].append(
            {
                "id": 100000 + i,
                "epn": f"{10000 + i // len(letters)}{letters[i % len(letters)]}",
                "start_time": start,
                "end_time": end,
                "principal_scientist": _person(rng),
                "data_scientists": [_person(rng) for _ in range(rng.randint(0, 4))],
            }
        )
    return {"token-ttl-seconds": DEFAULT_TOKEN_TTL, "equipment": equipment}
