"""The portal simulator speaks the portal's API over real HTTP, with faults on demand."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
import requests

from assyncy_dagster_demo.testing.stack import DEMO_EQUIPMENT, DEMO_VISITS
from tests.support.helpers import PORTAL_DATA, REPO, benchmark_module, portal_data_copy

generate_visits = benchmark_module("visit_data").generate_visits  # many visits, as the benchmarks use
MX1, MX2 = PORTAL_DATA["equipment"]
DEMO_ACCOUNT = DEMO_EQUIPMENT[0]  # the demo's account (equipment 23), as config.yml names it
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=timezone(timedelta(hours=11)))


def token_for(sim, account=MX1, **changes) -> requests.Response:
    fields = {"username": account["username"], "password": account["password"], "grant_type": "password"}
    fields.update(changes)
    return requests.post(
        f"{sim.url}/api/v1/oauth/token",
        auth=(account["client_name"], account["client_password"]),
        data=fields,
        timeout=5,
    )


def get(sim, path: str, **params) -> requests.Response:
    return requests.get(f"{sim.url}{path}", params=params, timeout=5)


def visits_of(sim, equipment_id: int = 23, account=MX1, **params) -> requests.Response:
    token = token_for(sim, account).json()["data"]["access_token"]
    return get(sim, f"/api/v1/equipment/{equipment_id}/visits", access_token=token, **params)


def set_faults(sim, **faults) -> requests.Response:
    return requests.post(f"{sim.url}/_sim/faults", json=faults, timeout=5)


# -- authentication -----------------------------------------------------------------


def test_valid_credentials_get_an_access_token(portal_sim):
    response = token_for(portal_sim)

    assert response.status_code == 200
    assert response.json()["data"]["access_token"] in portal_sim.issued_tokens()


def test_wrong_password_is_refused_with_a_meta_error_message(portal_sim):
    response = token_for(portal_sim, password="wrong")

    assert response.status_code == 401
    assert response.json() == {"meta": {"error_message": "Invalid username or password"}}


def test_wrong_client_credentials_are_refused(portal_sim):
    response = token_for(portal_sim, {**MX1, "client_password": MX2["client_password"]})

    assert response.status_code == 401
    assert response.json()["meta"]["error_message"] == "Client authentication failed"


def test_grant_type_other_than_password_is_refused(portal_sim):
    assert token_for(portal_sim, grant_type="client_credentials").status_code == 400


def test_visits_without_a_token_are_refused(portal_sim):
    response = get(portal_sim, "/api/v1/equipment/23/visits")

    assert response.status_code == 401
    assert "error_message" in response.json()["meta"]


def test_token_reads_only_its_own_accounts_equipment(portal_sim):
    response = visits_of(portal_sim, 24, account=MX1)

    assert response.status_code == 403


def test_shared_account_reads_every_equipment_it_owns(make_portal_sim):
    sim = make_portal_sim(DEMO_VISITS)

    assert visits_of(sim, 23, account=DEMO_ACCOUNT).status_code == 200
    assert visits_of(sim, 24, account=DEMO_ACCOUNT).status_code == 200


def test_expired_tokens_are_refused(portal_sim):
    token = token_for(portal_sim).json()["data"]["access_token"]
    assert requests.post(f"{portal_sim.url}/_sim/expire-tokens", timeout=5).json() == {"expired": 1}

    response = get(portal_sim, "/api/v1/equipment/23/visits", access_token=token)

    assert response.status_code == 401
    assert response.json()["meta"]["error_message"] == "The access token provided has expired"


def test_tokens_expire_after_their_lifetime(make_portal_sim):
    sim = make_portal_sim(token_ttl=0.3)
    token = token_for(sim).json()["data"]["access_token"]
    assert get(sim, "/api/v1/equipment/23/visits", access_token=token).status_code == 200

    deadline = time.monotonic() + 5
    while get(sim, "/api/v1/equipment/23/visits", access_token=token).status_code == 200:
        assert time.monotonic() < deadline, "token still valid long after its lifetime"
        time.sleep(0.05)


# -- visits and times ----------------------------------------------------------------


def test_relative_times_count_from_the_simulator_start(make_portal_sim):
    sim = make_portal_sim(now=NOW)

    visits = visits_of(sim).json()["data"]["visits"]

    assert visits[0]["start_time"] == (NOW - timedelta(days=20)).isoformat()
    assert datetime.fromisoformat(visits[0]["end_time"]) == NOW - timedelta(days=19)


def test_absolute_times_are_served_as_written(make_portal_sim):
    data = portal_data_copy()
    data["equipment"][0]["visits"][0].update(
        start_time="2026-11-01T09:00:00+11:00", end_time="2026-11-02T09:00:00+11:00"
    )
    sim = make_portal_sim(data, now=NOW)

    served = visits_of(sim).json()["data"]["visits"][0]

    assert (served["start_time"], served["end_time"]) == ("2026-11-01T09:00:00+11:00", "2026-11-02T09:00:00+11:00")


def test_visits_are_filtered_to_those_overlapping_the_window(make_portal_sim):
    sim = make_portal_sim(now=NOW)
    window = {
        "start_time": (NOW - timedelta(days=19, hours=12)).isoformat(),
        "end_time": (NOW - timedelta(days=4, hours=12)).isoformat(),
    }

    epns = [v["epn"] for v in visits_of(sim, **window).json()["data"]["visits"]]

    assert epns == ["12282a", "13001a"]  # the first ends inside the window, the second starts inside it


def test_visits_without_a_window_are_all_served(portal_sim):
    assert len(visits_of(portal_sim).json()["data"]["visits"]) == 2


def test_bad_window_time_is_refused(portal_sim):
    assert visits_of(portal_sim, start_time="last tuesday").status_code == 400


def test_visits_are_served_with_their_people(portal_sim):
    visit = visits_of(portal_sim).json()["data"]["visits"][0]

    assert visit["principal_scientist"]["last_name"] == "Lovelace"
    assert [p["first_names"] for p in visit["data_scientists"]] == ["Alan", "Grace"]


def test_unknown_equipment_is_not_found(portal_sim):
    assert visits_of(portal_sim, 99).status_code == 404


# -- the other endpoints -------------------------------------------------------------------


def test_equipment_endpoint_describes_the_equipment(portal_sim):
    token = token_for(portal_sim).json()["data"]["access_token"]

    body = get(portal_sim, "/api/v1/equipment/23", access_token=token).json()

    assert body == {"data": {"equipment": {"id": 23, "name": "Equipment 23"}}}


def test_proposals_endpoint_lists_proposals_of_the_equipment(portal_sim):
    token = token_for(portal_sim).json()["data"]["access_token"]

    proposals = get(portal_sim, "/api/v1/equipment/23/proposals", access_token=token).json()["data"]["proposals"]

    assert [(p["number"], p["epns"]) for p in proposals] == [("12282", ["12282a"]), ("13001", ["13001a"])]
    assert proposals[0]["allocations"] == [{"id": 12282, "equipment_id": 23}]


def test_proposal_allocation_visits_endpoint_serves_that_allocations_visits(portal_sim):
    token = token_for(portal_sim).json()["data"]["access_token"]

    visits = get(portal_sim, "/api/v1/proposalAllocations/12282/visits", access_token=token).json()["data"]["visits"]

    assert [v["epn"] for v in visits] == ["12282a"]  # 12282b is on equipment 24, another account's


# -- faults ---------------------------------------------------------------------------------


def test_fail_next_answers_the_status_then_recovers(portal_sim):
    set_faults(portal_sim, fail_next=2, status=502)

    statuses = [token_for(portal_sim).status_code for _ in range(3)]

    assert statuses == [502, 502, 200]


def test_fail_first_at_construction_fails_the_first_requests(make_portal_sim):
    sim = make_portal_sim(fail_first=1, fail_status=503)

    assert [token_for(sim).status_code for _ in range(2)] == [503, 200]


def test_faults_given_at_construction_apply_from_the_start(make_portal_sim):
    sim = make_portal_sim(faults={"down": True})

    with pytest.raises(requests.ConnectionError):
        token_for(sim)


def test_faults_can_be_limited_to_one_path(portal_sim):
    set_faults(portal_sim, fail_next=5, path="/visits")

    assert token_for(portal_sim).status_code == 200
    assert visits_of(portal_sim).status_code == 500


def test_malformed_next_serves_truncated_json(portal_sim):
    set_faults(portal_sim, malformed_next=1)

    response = get(portal_sim, "/api/v1/equipment/23/visits")

    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()


def test_body_next_serves_the_given_body(portal_sim):
    set_faults(portal_sim, body_next=1, body={"data": {}})

    assert get(portal_sim, "/api/v1/equipment/23/visits").json() == {"data": {}}


def test_down_drops_connections_until_up_again(portal_sim):
    set_faults(portal_sim, down=True)
    with pytest.raises(requests.ConnectionError):
        token_for(portal_sim)

    set_faults(portal_sim, down=False)

    assert token_for(portal_sim).status_code == 200


def test_delay_holds_each_answer(portal_sim):
    set_faults(portal_sim, delay_seconds=0.3)
    started = time.monotonic()

    token_for(portal_sim)

    assert time.monotonic() - started >= 0.3


def test_unknown_fault_setting_is_refused(portal_sim):
    response = set_faults(portal_sim, explode=True)

    assert response.status_code == 400
    assert "explode" in response.json()["meta"]["error_message"]


def test_fault_count_must_be_a_number(portal_sim):
    assert set_faults(portal_sim, fail_next=True).status_code == 400


def test_stats_count_requests_per_kind(portal_sim):
    visits_of(portal_sim)
    token_for(portal_sim, password="wrong")

    stats = requests.get(f"{portal_sim.url}/_sim/stats", timeout=5).json()

    assert (stats["requests"], stats["token_requests"], stats["tokens_issued"], stats["auth_failures"]) == (3, 2, 1, 1)
    assert stats["visits_requests"] == 1
    assert stats["by_path"]["/api/v1/equipment/23/visits"] == 1


def test_reset_stats_starts_counting_afresh(portal_sim):
    token_for(portal_sim)

    stats = requests.post(f"{portal_sim.url}/_sim/reset-stats", timeout=5).json()

    assert stats["requests"] == 0


def test_demo_visits_tell_the_demo_story(make_portal_sim):
    sim = make_portal_sim(DEMO_VISITS)
    now = datetime.now(UTC)

    visits = {}
    for equipment_id in (23, 24):
        for visit in visits_of(sim, equipment_id, account=DEMO_ACCOUNT).json()["data"]["visits"]:
            visits[visit["epn"]] = visit

    assert sorted(visits) == ["12282a", "12282b", "13001a", "13001b", "14500a", "14777a"]
    ended = {epn for epn, v in visits.items() if datetime.fromisoformat(v["end_time"]) < now}
    assert ended == {"12282a", "12282b", "13001a", "14500a", "14777a"}
    assert all(datetime.fromisoformat(v["start_time"]) > now - timedelta(days=30) for v in visits.values())
    for epn in ("14500a", "14777a"):
        assert visits[epn]["principal_scientist"]["email"] and len(visits[epn]["data_scientists"]) == 2
    assert any("&" in p["first_names"] + p["last_name"] for p in visits["14777a"]["data_scientists"])


def test_generated_visits_are_served_and_mostly_ended(make_portal_sim):
    sim = make_portal_sim(generate_visits(200, (23,), seed=3), now=NOW)
    account = {
        "username": "user-23",
        "password": "password-23",
        "client_name": "client-23",
        "client_password": "client-password-23",
    }

    visits = visits_of(sim, 23, account=account).json()["data"]["visits"]

    assert len(visits) == 200
    ended = [v for v in visits if datetime.fromisoformat(v["end_time"]) <= NOW]
    assert 170 <= len(ended) < 200


# -- the command line -------------------------------------------------------------------------


def start_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "assyncy_dagster_demo.portal_sim", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        cwd=REPO,
    )


def first_line(proc: subprocess.Popen, timeout: float = 15) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "portal simulator printed nothing"
    return proc.stdout.readline().strip()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_command_line_prints_its_url_and_stops_on_signal(signum):
    proc = start_cli("--visits", str(DEMO_VISITS), "--port", "0", "--quiet")
    try:
        line = first_line(proc)
        assert line.startswith("portal simulator listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1]
        assert requests.get(f"{url}/_sim/stats", timeout=5).status_code == 200

        os.killpg(proc.pid, signum)

        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_command_line_reports_a_bad_data_file(tmp_path):
    path = tmp_path / "broken.yml"
    path.write_text("equipment: [{id: 23}]\n")
    proc = start_cli("--visits", str(path))
    try:
        _, stderr = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    assert proc.returncode == 2
    assert "broken.yml: equipment[0].username: missing" in stderr
