"""A simulator of the Australian Synchrotron User Portal API, over real HTTP.

Only the synchrotron can reach the real portal, so the demo and the tests talk
to this one. It serves the endpoints and answer shapes the real API uses:

- `POST /api/v1/oauth/token`: HTTP basic auth (client_name, client_password),
  form fields `username`, `password`, `grant_type=password`;
  `{"data": {"access_token": ...}}` or HTTP 401 `{"meta": {"error_message": ...}}`.
- `GET /api/v1/equipment/<id>/visits?access_token=T&start_time=ISO&end_time=ISO`:
  `{"data": {"visits": [...]}}`, the visits overlapping the window.
- `GET /api/v1/equipment/<id>`, `/api/v1/equipment/<id>/proposals`,
  `/api/v1/proposalAllocations/<id>/visits`.

A token is valid for the equipment of the account that obtained it, until it
expires (`token-ttl-seconds`). Faults are injected through the constructor,
the command line, or at run time through the control endpoints:

- `POST /_sim/faults` `{"fail_next": N, "status": 500, "delay_seconds": x,
  "malformed_next": N, "body_next": N, "body": {...}, "down": true|false,
  "path": "visits"}` (`path` limits the faults to API paths containing it);
- `POST /_sim/expire-tokens`; `GET /_sim/stats`; `POST /_sim/reset-stats`.

The data file (YAML or JSON)::

    token-ttl-seconds: 3600          # optional
    timezone: Australia/Melbourne    # optional, for relative times
    equipment:
      - id: 23
        username: demo-user
        password: demo-password
        client_name: demo-client
        client_password: demo-client-password
        name: MX1                    # optional
        visits:
          - {id: 1, epn: 12282a, start_time: now-10d, end_time: now-9d,
             principal_scientist: {first_names: Ada, last_name: Lovelace, email: ada@example.edu},
             data_scientists: []}

Times are ISO 8601 with offset, or relative to the simulator's start
(`now`, `now-3d`, `now+2h`, `now-90m`, `now-1d+6h`) so that a demo file stays
valid forever. No Dagster imports.

The package: `data` (the data file read, times resolved, visits encoded once), `server` (the HTTP
server and handler, answers written), `simulator` (`PortalSimulator`: endpoints, tokens, faults,
counts), `cli` (`assyncy portal-sim`; `python -m assyncy_dagster_demo.portal_sim`). What the tests,
the benchmarks and the demo use is imported here.
"""

from .cli import add_portal_sim_arguments, main, run_portal_sim
from .data import (
    DEFAULT_TIMEZONE,
    DEFAULT_TOKEN_TTL,
    SimulatorDataError,
    equipment_credentials,
    load_data,
    resolve_time,
)
from .simulator import PortalSimulator

__all__ = [
    "DEFAULT_TIMEZONE",
    "DEFAULT_TOKEN_TTL",
    "PortalSimulator",
    "SimulatorDataError",
    "add_portal_sim_arguments",
    "equipment_credentials",
    "load_data",
    "main",
    "resolve_time",
    "run_portal_sim",
]
