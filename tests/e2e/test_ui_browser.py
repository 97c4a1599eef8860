"""What a person sees in the Dagster UI, rendered by a real browser.

The real dagster-webserver serves a stack instance in which one EPN has been
materialised; Debian's headless Chromium (`apt-get install chromium`, which
`make test` does) loads each page and dumps the DOM it rendered, the DOM a
person's browser shows. A screenshot of each page is saved in the test's
temporary folder (`<name>.png`) for a person to look at.

On a browser profile's first visit to a UI on 127.0.0.1 or localhost, Dagster
opens a "Join the Dagster community" dialog over the page. `--dump-dom` still
gets the whole page under it; for the screenshots, the test then does what the
dialog's Skip button does (the `setNuxSeen` mutation), so the rest are clear.

Seven Chromium instances started at once with a virtual-time budget hung here
(four of them, for good); two at a time, each page takes a few seconds, and a
browser that does not finish in 30 s is replaced once.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg
import pytest
import requests

from assyncy_dagster.assets.report import repatriation_report
from assyncy_dagster.definitions import build_definitions, build_resources
from assyncy_dagster.escaping import WORD_JOINER
from assyncy_dagster.names import REPATRIATION_JOB
from assyncy_dagster.run_configs import batch_run_config
from assyncy_dagster_demo.portal_sim import PortalSimulator
from assyncy_dagster_demo.testing.stack import DEMO_EQUIPMENT
from tests.support.helpers import CHROMIUM_OFFLINE, webserver

CHROMIUM = shutil.which("chromium")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None, reason="Debian's chromium is not installed (`make test` installs it with apt)"
    ),
]

# Without a virtual-time budget the single-page app is dumped before it has drawn anything.
BROWSER = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--virtual-time-budget=15000",
    "--window-size=1400,1000",
    *CHROMIUM_OFFLINE,
]
COMMUNITY_DIALOG = "Join the Dagster community"


class Browser:
    """Debian's headless Chromium pointed at one UI; each page in a fresh profile."""

    def __init__(self, base_url: str, out: Path):
        self.base_url, self.out = base_url, out

    def open(self, name: str, path: str, timeout: float = 30) -> str:
        """The rendered DOM of `path`; its screenshot is saved as `<name>.png`."""
        for attempt in range(2):
            profile = self.out / f"profile-{name}-{attempt}"
            argv = [
                CHROMIUM,
                *BROWSER,
                f"--user-data-dir={profile}",
                f"--screenshot={self.out / (name + '.png')}",
                "--dump-dom",
                self.base_url + path,
            ]
            try:
                dom = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=True).stdout
            except subprocess.TimeoutExpired:
                continue  # the virtual clock hung (rare, and only under load): a fresh browser loads it
            finally:
                shutil.rmtree(profile, ignore_errors=True)
            assert "Catalog" in dom, f"{path}: the UI did not render (see {self.out / name}.png)"
            return dom
        raise AssertionError(f"chromium did not load {path} within {timeout} s, twice")

    def open_all(self, pages: dict[str, str]) -> dict[str, str]:
        """Each page's DOM by name, two browsers at a time (more hang now and then)."""
        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = {name: pool.submit(self.open, name, path) for name, path in pages.items()}
            return {name: future.result() for name, future in futures.items()}


def test_the_ui_shows_the_assets_the_epn_partitions_the_check_and_the_report(stack, tmp_path):
    stack.lay_out("12282a")
    stack.instance.add_dynamic_partitions("epn", ["12282a", "12282b", "13001a"])
    assert stack.materialize("12282a").success
    assert dg.materialize([repatriation_report], instance=stack.instance, resources=build_resources()).success

    with webserver(tmp_path) as graphql:
        browser = Browser(graphql.removesuffix("/graphql"), tmp_path)
        overview = browser.open("epn_data", "/assets/epn_data")
        assert COMMUNITY_DIALOG in overview, "a first visit shows the community dialog over the page"
        requests.post(graphql, json={"query": "mutation { setNuxSeen }"}, timeout=30).raise_for_status()
        pages = browser.open_all(
            {
                "lineage": "/asset-groups",
                "epn_data_partitions": "/assets/epn_data?view=partitions",
                # Two checks: the page opens the first by name (intact_at_home) unless told which.
                "epn_data_checks": "/assets/epn_data?view=checks&checkDetail=matches_source",
                "portal_visits": "/assets/portal_visits",
                "repatriation_report": "/assets/repatriation_report",
            }
        )

    # The asset's page: its latest materialisation is the EPN, and where it came from.
    assert "Latest materialization" in overview and "12282a" in overview
    assert "portal_visits" in overview, "the upstream asset, in the page's lineage"
    # The graph: the three assets, and no community dialog any more.
    lineage = pages["lineage"]
    assert "Global asset lineage" in lineage and COMMUNITY_DIALOG not in lineage
    assert all(asset in lineage for asset in ("portal_visits", "epn_data", "repatriation_report"))
    # Partitions: every EPN is a key; one materialised, two missing.
    partitions = pages["epn_data_partitions"]
    assert all(epn in partitions for epn in ("12282a", "12282b", "13001a"))
    assert "Materialized (1)" in partitions and "Missing (2)" in partitions
    # The check, its result and the partition it was for.
    checks = pages["epn_data_checks"]
    assert "matches_source" in checks and "Passed" in checks and "12282a" in checks
    assert "intact_at_home" in checks  # the fixity audit's, not run yet
    # The visit record as metadata: the principal scientist of 12282a in the demo portal.
    assert "Jane Citizen" in pages["portal_visits"]
    # The report: its attention table (an unmapped EPN, and why) and totals. Its plot is markdown
    # longer than the UI shows inline, behind a "Show Markdown" button.
    report = pages["repatriation_report"]
    assert "needing_attention" in report and "totals_by_project" in report
    assert "14500a" in report and "base number 14500 is not in epn_cap_map" in report
    assert "plot" in report and "Show Markdown" in report


def test_a_portal_error_in_the_report_is_shown_as_text_never_as_a_link_or_an_image(stack, tmp_path):
    """The Dagster UI renders markdown metadata (GitHub-flavoured: it also links bare URLs, after
    undoing backslash escapes); a portal error message with a link, an image, HTML and a bare
    `www.` address, and the portal's own URL in the error, reach the report's attention table as
    text, in the real UI."""
    payload = "[a](https://e.example/p) ![](https://e.example/t) <b>x</b> www.e.example"
    visit = {"id": 1, "epn": "12282a", "start_time": "now-9d", "end_time": "now-8d"}
    data = {"equipment": [{**DEMO_EQUIPMENT[0], "visits": [visit]}, {**DEMO_EQUIPMENT[1], "visits": []}]}
    with PortalSimulator(data) as portal:  # one EPN: the attention table is short enough to show inline
        stack.configure(**{"base-url": portal.url})
        stack.lay_out("12282a")
        portal.set_faults(body_next=100, body={"meta": {"error_message": payload}}, path="oauth/token")
        batch = build_definitions(str(stack.config_path)).resolve_job_def(REPATRIATION_JOB)
        failed = batch.execute_in_process(
            run_config=batch_run_config(["12282a"]),
            instance=stack.instance,
            raise_on_error=False,
        )
        portal.set_faults(body_next=0)
        report = dg.materialize([repatriation_report], instance=stack.instance, resources=build_resources())
    assert not failed.success and report.success

    with webserver(tmp_path) as graphql:
        requests.post(graphql, json={"query": "mutation { setNuxSeen }"}, timeout=30).raise_for_status()
        page = Browser(graphql.removesuffix("/graphql"), tmp_path).open("report", "/assets/repatriation_report")

    text = page.replace(WORD_JOINER, "")  # invisible; it keeps the renderer from linking bare URLs
    assert "authentication refused: " + html.escape(payload, quote=False)[:40] in text
    assert 'href="https://e.example' not in page and 'src="https://e.example' not in page
    assert 'href="http://www.e.example' not in page
    assert not re.search(r'href="https?://127\.0\.0\.1', page), "the portal's URL in the error became a link"
    assert "<b>x</b>" not in page
