"""PortalClient against the portal simulator over real HTTP (no mocked requests)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
import requests

from assyncy_dagster.config import Equipment
from assyncy_dagster.domain import Person
from assyncy_dagster.portal.client import PortalClient
from assyncy_dagster.portal.errors import PortalAuthError, PortalDataError, PortalError
from assyncy_dagster.resources.portal import PortalResource
from assyncy_dagster_demo.portal_sim import equipment_credentials
from tests.support.helpers import (
    PORTAL_DATA,
    client_for,
    equipment_for,
    last_days,
    portal_data_copy,
    portal_secrets,
    sample_config,
)

UTC = UTC


def control(sim, path: str, payload: dict | None = None) -> dict:
    """Drive the simulator through its HTTP control endpoints, as an operator would."""
    if path == "stats":
        response = requests.get(f"{sim.url}/_sim/stats", timeout=5)
    else:
        response = requests.post(f"{sim.url}/_sim/{path}", json=payload or {}, timeout=5)
    response.raise_for_status()
    return response.json()


def hostile_data(epns: list[object]) -> dict:
    data = portal_data_copy()
    for i, epn in enumerate(epns):
        data["equipment"][0]["visits"].append(
            {"id": 9000 + i, "epn": epn, "start_time": "now-3d", "end_time": "now-2d"}
        )
    return data


# -- happy path ------------------------------------------------------------------


def test_visits_are_merged_across_equipment_and_tagged_with_their_equipment(portal_sim):
    visits = client_for(portal_sim).visits(*last_days())

    assert {(v.epn, v.equipment_id) for v in visits} == {
        ("12282a", 23),
        ("13001a", 23),
        ("12282b", 24),
        ("13001b", 24),
    }


def test_visits_are_sorted_by_start_time(portal_sim):
    visits = client_for(portal_sim).visits(*last_days())

    assert [v.epn for v in visits] == ["12282a", "12282b", "13001a", "13001b"]


def test_visits_carry_the_people_and_aware_times_from_the_portal(portal_sim):
    visit = client_for(portal_sim).visits(*last_days())[0]

    assert visit.principal_scientist == Person("Ada", "Lovelace", "ada.lovelace@example.edu")
    assert [p.full_name for p in visit.data_scientists] == ["Alan Turing", "Grace Hopper"]
    assert visit.start_time.tzinfo is not None and visit.end_time - visit.start_time == timedelta(days=1)


def test_visit_without_principal_scientist_has_none(portal_sim):
    running = [v for v in client_for(portal_sim).visits(*last_days()) if v.epn == "13001b"]

    assert running[0].principal_scientist is None


def test_only_visits_overlapping_the_window_are_returned(portal_sim):
    now = datetime.now(UTC)

    visits = client_for(portal_sim).visits(now - timedelta(days=6), now - timedelta(days=3))

    assert [v.epn for v in visits] == ["13001a"]


def test_naive_window_is_refused_before_asking_the_portal(portal_sim):
    with pytest.raises(ValueError, match="timezone-aware"):
        client_for(portal_sim).visits(datetime(2026, 1, 1), datetime(2026, 2, 1))
    assert control(portal_sim, "stats")["requests"] == 0


def test_equipment_without_visits_gives_an_empty_list(make_portal_sim):
    data = portal_data_copy()
    for equipment in data["equipment"]:
        equipment["visits"] = []
    sim = make_portal_sim(data)

    assert client_for(sim).visits(*last_days()) == []


# -- authentication ---------------------------------------------------------------


def test_authenticate_returns_a_token_the_portal_accepts(portal_sim):
    client = client_for(portal_sim)

    token = client.authenticate(equipment_for()[0])

    assert token in portal_sim.issued_tokens()


def test_tokens_are_reused_between_calls(portal_sim):
    client = client_for(portal_sim)
    client.visits(*last_days())
    client.visits(*last_days())

    assert control(portal_sim, "stats")["token_requests"] == 2


def test_wrong_password_raises_auth_error_with_the_portals_message(portal_sim):
    equipment = [e.model_copy(update={"password": "not-the-password"}) for e in equipment_for()]

    with pytest.raises(PortalAuthError, match=r"equipment 23.*Invalid username or password"):
        client_for(portal_sim, equipment).visits(*last_days())


def test_wrong_client_password_raises_auth_error(portal_sim):
    equipment = [e.model_copy(update={"client_password": "wrong-client-secret"}) for e in equipment_for()]

    with pytest.raises(PortalAuthError, match=r"equipment 23.*Client authentication failed"):
        client_for(portal_sim, equipment).authenticate(equipment[0])


def test_account_without_access_to_the_equipment_raises_auth_error(portal_sim):
    mx1, _ = equipment_for()
    borrowed = Equipment(**{**mx1.model_dump(), "id": 24})  # equipment 24 with the account of 23

    with pytest.raises(PortalAuthError, match=r"equipment 24.*HTTP 403"):
        client_for(portal_sim, [borrowed]).visits(*last_days())


def test_expired_token_is_renewed_once_and_the_request_repeated(portal_sim):
    client = client_for(portal_sim)
    first = client.visits(*last_days())
    control(portal_sim, "expire-tokens")

    second = client.visits(*last_days())

    stats = control(portal_sim, "stats")
    assert second == first
    assert stats["unauthorized"] == 2  # one 401 per equipment
    assert stats["token_requests"] == 4  # two at first, then one re-authentication per equipment


def test_token_refused_again_after_renewal_raises_auth_error(make_portal_sim):
    # A token lifetime shorter than the trip back makes every fresh token arrive expired.
    sim = make_portal_sim(token_ttl=1e-9)

    with pytest.raises(PortalAuthError, match="equipment 23: a fresh access token was rejected too"):
        client_for(sim).visits(*last_days())
    assert control(sim, "stats")["token_requests"] == 2


# -- retries and failures ------------------------------------------------------------


def test_server_errors_are_retried_until_the_portal_answers(portal_sim):
    control(portal_sim, "faults", {"fail_next": 2, "status": 503})

    visits = client_for(portal_sim, retries=2).visits(*last_days())

    assert len(visits) == 4
    assert control(portal_sim, "stats")["faults_injected"] == 2


def test_exhausted_retries_raise_portal_error_naming_the_equipment(portal_sim):
    control(portal_sim, "faults", {"fail_next": 100, "status": 500, "path": "/equipment/24/"})

    with pytest.raises(PortalError, match=r"equipment 24: could not fetch visits after 3 attempts: HTTP 500") as info:
        client_for(portal_sim, retries=2).visits(*last_days())
    assert not isinstance(info.value, (PortalDataError, PortalAuthError))


def test_client_errors_are_not_retried(portal_sim):
    control(portal_sim, "faults", {"fail_next": 1, "status": 404, "path": "/visits"})

    with pytest.raises(PortalError, match="equipment 23: fetching visits failed: HTTP 404"):
        client_for(portal_sim, retries=3).visits(*last_days())
    assert control(portal_sim, "stats")["faults_injected"] == 1


def test_unreachable_portal_raises_portal_error_not_an_empty_list(make_portal_sim):
    sim = make_portal_sim()
    url = sim.url
    sim.stop()  # nothing listens on that port any more
    client = PortalClient(url, equipment_for(), timeout=2, retries=1, backoff=0.01)

    with pytest.raises(PortalError, match=r"equipment 23: could not authenticate after 2 attempts: ConnectionError"):
        client.visits(*last_days())


def test_dropped_connections_raise_portal_error(portal_sim):
    control(portal_sim, "faults", {"down": True})

    with pytest.raises(PortalError, match="equipment 23: could not authenticate after 2 attempts"):
        client_for(portal_sim, retries=1).visits(*last_days())


def test_slow_portal_times_out_and_raises_portal_error(portal_sim):
    control(portal_sim, "faults", {"delay_seconds": 2.0})

    with pytest.raises(
        PortalError, match=r"equipment 23: could not authenticate after 2 attempts: no answer within 0.2 s"
    ):
        client_for(portal_sim, timeout=0.2, retries=1).visits(*last_days())


def test_answer_that_is_not_json_raises_portal_data_error(portal_sim):
    control(portal_sim, "faults", {"malformed_next": 1, "path": "/visits"})

    with pytest.raises(PortalDataError, match="equipment 23: visits answer is not JSON"):
        client_for(portal_sim).visits(*last_days())


def test_answer_without_data_visits_raises_portal_data_error(portal_sim):
    control(portal_sim, "faults", {"body_next": 1, "body": {"data": {}}, "path": "/visits"})

    with pytest.raises(PortalDataError, match=r"equipment 23: visits answer has no data.visits"):
        client_for(portal_sim).visits(*last_days())


def test_visits_that_are_not_a_list_raise_portal_data_error(portal_sim):
    control(portal_sim, "faults", {"body_next": 1, "body": {"data": {"visits": {"epn": "12282a"}}}, "path": "/visits"})

    with pytest.raises(PortalDataError, match=r"data.visits is a dict, expected a list"):
        client_for(portal_sim).visits(*last_days())


def test_token_answer_without_access_token_raises_portal_data_error(portal_sim):
    control(portal_sim, "faults", {"body_next": 1, "body": {"data": {}}, "path": "/oauth/token"})

    with pytest.raises(PortalDataError, match=r"equipment 23: the token answer .* holds no data.access_token"):
        client_for(portal_sim).visits(*last_days())


# -- portal data that breaks the rules -------------------------------------------------


def test_visit_with_hostile_epn_is_dropped_with_a_warning(make_portal_sim, caplog):
    sim = make_portal_sim(hostile_data(["../../etc/passwd", "12282a; rm -rf /", "9" * 500 + "a"]))

    with caplog.at_level(logging.WARNING, logger="assyncy.portal"):
        visits = client_for(sim).visits(*last_days())

    assert sorted(v.epn for v in visits) == ["12282a", "12282b", "13001a", "13001b"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("invalid EPN '../../etc/passwd'" in w for w in warnings)
    assert any("'12282a; rm -rf /'" in w for w in warnings)
    assert all(len(w) < 200 for w in warnings)  # a huge EPN is shown truncated


def test_visit_with_non_text_epn_is_dropped(make_portal_sim):
    sim = make_portal_sim(hostile_data([12282, ["12282a"]]))

    assert len(client_for(sim).visits(*last_days())) == 4


def rejected_alone(sim, caplog) -> tuple[list[str], dict[str, str]]:
    client = client_for(sim)
    with caplog.at_level(logging.WARNING):
        epns = sorted(v.epn for v in client.visits(*last_days()))
    return epns, client.rejected


def test_visit_missing_a_required_field_is_skipped_alone_naming_equipment_and_index(make_portal_sim, caplog):
    data = portal_data_copy()
    del data["equipment"][1]["visits"][1]["start_time"]
    sim = make_portal_sim(data, strict=False)
    epns, rejected = rejected_alone(sim, caplog)
    assert len(epns) == 3  # the other visits, on both beamlines, still count
    [(_key, why)] = rejected.items()
    assert "equipment 24: visit #1 (id 2002, EPN 13001b) lacks start_time" in why
    assert "lacks start_time" in caplog.text


def test_visit_with_unparseable_time_is_skipped_alone(make_portal_sim, caplog):
    data = portal_data_copy()
    data["equipment"][0]["visits"][0]["end_time"] = "tomorrow-ish"
    sim = make_portal_sim(data, strict=False)
    epns, rejected = rejected_alone(sim, caplog)
    assert "12282a" not in epns and len(epns) == 3
    assert "end_time 'tomorrow-ish'" in rejected["12282a"]


@pytest.mark.parametrize(
    "field, value, why",
    [
        ("start_time", "2026-11-01T09:00:00", "is not an ISO 8601 time with UTC offset"),
        ("end_time", None, "lacks end_time"),
        ("principal_scientist", "Dr Who", "principal_scientist is a str"),
    ],
)
def test_a_malformed_visit_never_stops_the_others(make_portal_sim, caplog, field, value, why):
    data = portal_data_copy()
    data["equipment"][0]["visits"][0][field] = value
    sim = make_portal_sim(data, strict=False)
    epns, rejected = rejected_alone(sim, caplog)
    assert epns == ["12282b", "13001a", "13001b"]
    assert why in rejected["12282a"]


def test_every_malformed_visit_of_an_epn_is_named_by_id_in_the_answer(make_portal_sim):
    data = portal_data_copy()
    data["equipment"][0]["visits"][0]["end_time"] = "2026-12-07T09:00:00"  # no UTC offset
    data["equipment"][1]["visits"].append({**data["equipment"][0]["visits"][0], "id": 2003, "start_time": "soon"})
    data["equipment"][1]["visits"].append("not a visit")
    sim = make_portal_sim(data, strict=False)

    answer = client_for(sim).answer(*last_days())

    assert sorted(v.epn for v in answer.visits) == ["12282b", "13001a", "13001b"]
    assert sorted(answer.malformed) == ["12282a", "equipment 24 visit #3"]
    why = answer.malformed["12282a"]
    assert "equipment 23: visit #0 (id 1001, EPN 12282a): end_time '2026-12-07T09:00:00'" in why
    assert "equipment 24: visit #2 (id 2003, EPN 12282a): start_time 'soon'" in why


def test_a_malformed_visit_is_logged_once_not_at_every_tick(make_portal_sim, caplog):
    data = portal_data_copy()
    data["equipment"][0]["visits"][0]["end_time"] = "soon, honestly"
    sim = make_portal_sim(data, strict=False)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            client_for(sim).visits(*last_days())
    assert caplog.text.count("soon, honestly") == 1


# -- secrets ---------------------------------------------------------------------------


def exercise_every_path(sim) -> list[str]:
    """Authenticate, fetch, re-authenticate, retry and fail; return the texts of the errors raised."""
    errors = []
    client = client_for(sim)
    client.visits(*last_days())
    control(sim, "expire-tokens")
    control(sim, "faults", {"fail_next": 1})
    client.visits(*last_days())
    control(sim, "faults", {"malformed_next": 1, "path": "/visits"})
    for bad in (
        lambda: client.visits(*last_days()),
        lambda: client_for(sim, [e.model_copy(update={"password": "x" + e.password}) for e in equipment_for()]).visits(
            *last_days()
        ),
        lambda: client_for(sim, [e.model_copy(update={"client_password": e.password}) for e in equipment_for()]).visits(
            *last_days()
        ),
    ):
        try:
            bad()
        except PortalError as exc:
            errors.append(str(exc))
    control(sim, "faults", {"path": "", "down": True})
    try:
        client.visits(*last_days())
    except PortalError as exc:
        errors.append(str(exc))
    return errors


def test_debug_log_holds_no_password_or_token(portal_sim, caplog):
    with caplog.at_level(logging.DEBUG):  # every logger, urllib3's request log included
        exercise_every_path(portal_sim)

    logged = caplog.text + "".join(repr(r.args) for r in caplog.records)
    assert "authenticated equipment 23" in logged
    secrets = portal_secrets() + portal_sim.issued_tokens()
    assert len(portal_sim.issued_tokens()) >= 4
    assert [s for s in secrets if s in logged] == []


def test_errors_hold_no_password_or_token(portal_sim):
    errors = exercise_every_path(portal_sim)

    assert len(errors) == 4
    secrets = portal_secrets() + portal_sim.issued_tokens()
    assert [s for s in secrets if any(s in e for e in errors)] == []


# -- the Dagster resource --------------------------------------------------------------


def test_portal_resource_reads_credentials_from_config_file(portal_sim, tmp_path, monkeypatch):
    config = sample_config(
        tmp_path,
        **{
            "base-url": portal_sim.url,
            "equipment": equipment_credentials(PORTAL_DATA),
            "portal-retries": 1,
            "portal-allow-insecure": True,
        },
    )
    monkeypatch.setenv("ASSYNCY_CONFIG", str(config))
    resource = PortalResource()

    visits = resource.visits(*last_days())

    assert [v.epn for v in visits] == ["12282a", "12282b", "13001a", "13001b"]
    assert resource.client().retries == 1


def test_a_redirect_is_never_followed_with_the_credentials():
    """A 307/308 would make requests re-send the password form to the new address."""
    import http.server
    import threading

    received: list[str] = []

    class Elsewhere(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode())
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    elsewhere = http.server.HTTPServer(("127.0.0.1", 0), Elsewhere)

    class Redirecting(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.send_response(307)
            self.send_header("Location", f"http://127.0.0.1:{elsewhere.server_port}{self.path}")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    redirecting = http.server.HTTPServer(("127.0.0.1", 0), Redirecting)
    servers = [elsewhere, redirecting]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = PortalClient(f"http://127.0.0.1:{redirecting.server_port}", equipment_for(), retries=0)
        with pytest.raises(PortalError, match="HTTP 307, redirecting to") as caught:
            client.visits(*last_days())
        assert "never sent on" in str(caught.value)
        assert received == [], "the password form reached the redirect's target"
        for equipment in equipment_for():
            assert equipment.password not in str(caught.value)
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
