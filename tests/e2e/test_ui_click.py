"""A person repairs two EPNs from the Dagster UI by clicking, and then reads the report.

Selenium drives Debian's headless Chromium through Debian's chromedriver (`apt-get install
chromium chromium-driver`, which `make test` does) against the real dagster-webserver, while
the real dagster-daemon runs the backfill. Both are named by path, so Selenium never asks
Selenium Manager for a driver or a browser and nothing is downloaded: the test fails if
Selenium Manager is called at all, and SE_OFFLINE would forbid it any download anyway.

What the person does, with a screenshot after each step (`NN-step.png` in the test's
temporary folder): open `epn_data`; skip the "Join the Dagster community" dialog of a fresh
browser profile; click "Materialize…" and confirm the warning that `portal_visits` was never
materialised; tick two of the three EPNs in the launch dialog's partition list; click "Launch
backfill". The wait for the daemon's run reads the instance, not the UI. Then the partitions
view shows both EPNs materialised, and the report, rebuilt, shows its attention table and,
behind "[Show Markdown]", its plot.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from assyncy_dagster.assets.report import repatriation_report
from assyncy_dagster.definitions import build_resources
from assyncy_dagster_demo.testing.stack import far_from_the_digest
from tests.support.helpers import CHROMIUM_OFFLINE, EPN_DATA, dagster_daemon, passed_checks, wait_for, webserver

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the `test` extra (`make setup`)")
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.common.selenium_manager import SeleniumManager  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
        reason="Debian's chromium and chromium-driver are not installed (`make test` installs them)",
    ),
]

EPNS = ["12282a", "12282b", "13001a"]
CHOSEN = ["12282b", "13001a"]  # what the person ticks: two of the three
UI_WAIT = 60  # seconds for a page, a dialog or a button to show, on a busy 2-core machine


# An image decoded, in a dialog that has finished fading in (every ancestor fully opaque).
SHOWN_IN_FULL = """
const image = arguments[0];
if (!image.complete || image.naturalWidth === 0) return false;
for (let e = image; e; e = e.parentElement) if (getComputedStyle(e).opacity !== "1") return false;
return true;
"""


def exactly(words: str) -> str:
    """XPath: an element whose whole text is `words` (none of the words here holds a quote)."""
    return f"[normalize-space()='{words}']"


class Person:
    """Looks at and clicks in one Chromium window, as a person would, a numbered screenshot
    after each step; a wait that times out leaves a `NN-FAILED-...` screenshot of what was shown."""

    def __init__(self, driver: WebDriver, base_url: str, out: Path):
        self.driver, self.base_url, self.out = driver, base_url, out
        self.steps = 0

    def open(self, path: str) -> None:
        self.driver.get(self.base_url + path)

    def until(self, condition: Callable[[WebDriver], Any], what: str) -> Any:
        try:
            return WebDriverWait(self.driver, UI_WAIT).until(condition)
        except TimeoutException:
            shot = self.screenshot("FAILED-" + "-".join(what.split()[:4]))
            raise AssertionError(f"the UI did not show {what} within {UI_WAIT} s (see {shot})") from None

    def sees(self, words: str) -> WebElement:
        """The visible element whose whole text is `words`."""
        return self.until(EC.visibility_of_element_located((By.XPATH, f"//*{exactly(words)}")), repr(words))

    def sees_no_more(self, words: str) -> None:
        self.until(EC.invisibility_of_element_located((By.XPATH, f"//*{exactly(words)}")), f"{words!r} gone")

    def reads(self, *words: str) -> str:
        """The page's visible text, once it holds all of `words`."""

        def text_with_words(driver: WebDriver) -> str | None:
            shown = driver.find_element(By.TAG_NAME, "body").text
            return shown if all(w in shown for w in words) else None

        return self.until(text_with_words, f"the words {words}")

    def click(self, xpath: str, what: str) -> None:
        self.until(EC.element_to_be_clickable((By.XPATH, xpath)), what).click()

    def click_button(self, label: str) -> None:
        self.click(f"//button{exactly(label)}", f"a button {label!r}")

    def screenshot(self, step: str) -> Path:
        self.steps += 1
        path = self.out / f"{self.steps:02d}-{step}.png"
        self.driver.save_screenshot(str(path))
        return path


@contextlib.contextmanager
def chromium(profile: Path) -> Iterator[WebDriver]:
    """Debian's headless Chromium through Debian's chromedriver, in a fresh profile."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--window-size=1400,1000",
        f"--user-data-dir={profile}",
        *CHROMIUM_OFFLINE,
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def home_and_verified(instance: dg.DagsterInstance) -> set[str]:
    """The EPNs with an epn_data materialisation and a passed matches_source check."""
    return set(instance.get_materialized_partitions(EPN_DATA)) & set(passed_checks(instance))


def test_a_person_backfills_two_epns_from_the_ui_and_reads_the_report(stack, tmp_path, monkeypatch):
    started = time.monotonic()
    monkeypatch.setenv("SE_OFFLINE", "true")

    def no_selenium_manager(*_args, **_kwargs):
        raise AssertionError("Selenium asked Selenium Manager for a driver or a browser (it would download one)")

    monkeypatch.setattr(SeleniumManager, "binary_paths", no_selenium_manager)

    stack.configure(timezone=far_from_the_digest())
    stack.lay_out(*EPNS)
    stack.instance.add_dynamic_partitions("epn", EPNS)
    # Recorded as home already, so epn_sensor leaves them to the person: a repair from the UI.
    stack.settings().ignore.write_text(yaml.safe_dump({"previouslySynched": EPNS}))
    quiet_sensor = os.environ | {"ASSYNCY_SENSOR_INTERVAL_SECONDS": "30"}  # it has nothing to do here

    with webserver(tmp_path) as graphql, chromium(tmp_path / "profile") as driver:
        person = Person(driver, graphql.removesuffix("/graphql"), tmp_path)
        with dagster_daemon(tmp_path, quiet_sensor) as (daemon, log):
            person.open("/assets/epn_data")
            person.sees("Join the Dagster community")
            person.screenshot("community-dialog")
            person.click_button("Skip")
            person.sees_no_more("Join the Dagster community")
            person.screenshot("epn-data")

            # Until the daemon's first heartbeat the launch dialog warns that it is not running.
            wait_for(
                lambda: "BACKFILL" in stack.instance.get_daemon_heartbeats(),
                90,
                "the daemon's heartbeat",
                proc=daemon,
                log=log,
            )
            person.click_button("Materialize…")
            # portal_visits, upstream, was never materialised here: the UI asks first (epn_data does not read it).
            person.sees("Are you sure?")
            person.reads("have not been materialized yet", "portal_visits")
            person.screenshot("upstream-warning")
            person.click_button("Confirm")

            person.sees("Launch runs to materialize epn_data")
            person.sees("Select a partition or create one").click()
            for epn in CHOSEN:
                item = f"//*[@role='menuitem'][.//span{exactly(epn)}]"
                person.click(item, f"{epn} in the partition list")
                person.until(
                    EC.element_located_to_be_selected((By.XPATH, f"{item}//input[@type='checkbox']")), f"{epn} ticked"
                )
            person.screenshot("partitions-ticked")
            driver.switch_to.active_element.send_keys(Keys.ESCAPE)  # closes the list, not the dialog
            dialog = person.reads("2 partitions")
            assert "backfill daemon is not running" not in dialog
            person.screenshot("launch-dialog")
            person.click_button("Launch backfill")
            person.sees_no_more("Launch runs to materialize epn_data")
            backfill = person.reads("Created backfill").split("Created backfill", 1)[1].split()[0]
            person.screenshot("backfill-launched")
            clicked = time.monotonic()

            def runs() -> list[dg.DagsterRun]:
                return stack.instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill}))

            wait_for(
                lambda: (
                    home_and_verified(stack.instance) == set(CHOSEN)
                    and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs())
                ),
                150,
                f"backfill {backfill} to bring {CHOSEN} home and verify them",
                proc=daemon,
                log=log,
            )
            print(f"backfill {backfill}: {time.monotonic() - clicked:.0f} s from the click to the verified EPNs")
        [run] = runs()  # the two EPNs in one run, launched from the UI
        assert run.tags.get("dagster/from_ui") == "true"
        assert set(stack.instance.get_materialized_partitions(EPN_DATA)) == set(CHOSEN), "only the ticked EPNs"

        person.open("/assets/epn_data?view=partitions")
        person.reads("Materialized (2)", *CHOSEN)
        person.screenshot("partitions-materialised")
        person.sees(CHOSEN[0]).click()
        person.reads("View all historical events (1)")
        person.screenshot(f"partition-{CHOSEN[0]}")

        # What the daemon's report_refresh sensor would do within a minute, done at once.
        assert dg.materialize([repatriation_report], instance=stack.instance, resources=build_resources()).success
        person.open("/assets/repatriation_report")
        attention = person.until(
            EC.visibility_of_element_located((By.XPATH, f"//tr[td//span{exactly('attention')}]//table")),
            "the attention table",
        )
        rows = {row.text.split()[0]: row.text for row in attention.find_elements(By.XPATH, ".//tbody/tr")}
        assert "partial" in rows["12282a"], "recorded as home but not at the destination: to repair next"
        assert "base number 14500 is not in epn_cap_map" in rows["14500a"]
        assert not set(CHOSEN) & set(rows), "the two EPNs just brought home need no attention"
        person.screenshot("report")
        person.click(f"//tr[td//span{exactly('plot')}]//a{exactly('[Show Markdown]')}", "the plot's [Show Markdown]")
        plot = person.until(
            EC.visibility_of_element_located((By.CSS_SELECTOR, "img[src^='data:image/png']")), "the plot"
        )
        person.until(lambda d: d.execute_script(SHOWN_IN_FULL, plot), "the plot's PNG decoded and faded in")
        person.screenshot("report-plot")

    print(f"the test took {time.monotonic() - started:.0f} s")
