"""Hostile inputs from every side: EPN names in portal visits, in run config and as
folder names on the SFTP host, project names in epn_cap_map (and a project folder
that is a symlink), HTML, Jinja and shell syntax in scientists' names, unicode,
and a portal answer of 20 000 visits.

Figures: the number of hostile inputs, writes outside the destination root
(a snapshot of the test's tree outside it, before and after), commands run
(`touch` payloads whose file must never appear), and unescaped HTML in the e-mail.
"""

from __future__ import annotations

import csv
import html
import json
import os
import re
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._serdes import serialize_value
from markdown_it import MarkdownIt

from assyncy_dagster.assets.report import repatriation_report
from assyncy_dagster.config import ConfigError, load_settings
from assyncy_dagster.cycle import run_cycle
from assyncy_dagster.definitions import build_definitions, build_resources
from assyncy_dagster.epn import InvalidEpnError, destination_for
from assyncy_dagster.escaping import LOG_INDENT, WORD_JOINER
from assyncy_dagster.logs import configure_logging
from assyncy_dagster.names import ALERT_JOB, REPATRIATION_JOB
from assyncy_dagster.run_configs import batch_run_config
from assyncy_dagster_demo.portal_sim import PortalSimulator
from assyncy_dagster_demo.testing.sshd import make_source_tree
from assyncy_dagster_demo.testing.stack import DEMO_EQUIPMENT
from tests.support.faultkit import figure, requested_epns, tree_snapshot
from tests.support.helpers import alert_on_failed_run, person_data, ticker

MARK = Path("/tmp") / f"assyncy-PWNED-{os.getpid()}"


def _payloads(tag: str) -> list[str]:
    """Shell payloads that would create a marker file if anything ran them through a shell."""
    touch = f"touch {MARK}-{tag}"
    return [f"$({touch})", f"`{touch}`", f"; {touch};", f"| {touch}", f"&& {touch}", f"\n{touch}\n"]


HOSTILE_EPNS = [
    "../12282a",
    "12282a/../../escape",
    "/etc/passwd",
    "12282a/..",
    "..",
    ".",
    "",
    "12282a;touch",
    "-e",
    "--rsync-path=touch",
    "--server",
    "12282a\n",
    "12282a\x00",
    "12282A",
    "１２２８２a",
    "12282ä",
    "12282a ",
    " 12282a",
    "12282a*",
    "12282a?",
    "12282\u200ba",
    "1" * 13 + "a",
    "12282" + "a" * 5,
    "{{7*7}}a",
    "{% raw %}",
    "<script>alert(1)</script>",
    "12282a'",
    '12282a"',
    *_payloads("epn"),
]
# As folder names on the SFTP host (a folder name cannot hold "/" or NUL).
HOSTILE_FOLDERS = [e for e in HOSTILE_EPNS if e and "/" not in e and "\x00" not in e and e not in (".", "..")]
HOSTILE_PROJECTS = [
    "../escape",
    "..",
    "a/../../b",
    "/abs",
    "a/b",
    "",
    ".hidden",
    "ny79\n",
    "prøject",
    "-rf",
    "x" * 65,
    "{{7*7}}",
    "<b>x</b>",
    *_payloads("project"),
]
HOSTILE_NAMES = [  # scientists' names: the HTML part must show them as text
    "<script>alert('x')</script>",
    "<img src=x onerror=alert(1)>",
    '"><a href="javascript:alert(1)">',
    "{{ 7*7 }}",
    "{% for x in range(3) %}JINJA{% endfor %}",
    "{{ config.__class__ }}",
    "Siobhán Ó'Brien 李小龍 🚀",
    "Ana & Luis",
    *_payloads("name"),
]


def _marks() -> list[str]:
    return sorted(str(p) for p in Path("/tmp").glob(f"{MARK.name}*"))


def _outside(stack) -> dict:
    """The test's own tree outside the destination root and the files the product is meant to write."""
    snap = tree_snapshot(stack.root, skip=stack.destination_root)
    allowed = ("dagster_home", "etc/log", "etc/ignore.yml", "etc/alerted.yml", "etc/config.yml", "etc/.")
    return {k: v for k, v in snap.items() if not k.startswith(allowed)}


@pytest.mark.slow
def test_hostile_names_write_nothing_outside_the_root_run_nothing_and_are_escaped(stack):
    visits = [
        {
            "id": 1,
            "epn": "12282a",
            "start_time": "now-9d",
            "end_time": "now-8d",
            "principal_scientist": person_data("Jane", "Citizen", "someone@example.edu"),
            "data_scientists": [],
        }
    ]
    for i, epn in enumerate(HOSTILE_EPNS):
        visits.append(
            {
                "id": 100 + i,
                "epn": epn,
                "start_time": "now-9d",
                "end_time": "now-8d",
                "principal_scientist": person_data("Eve", "Hostile", "someone@example.edu"),
                "data_scientists": [],
            }
        )
    unmapped = [f"{14500 + i}a" for i in range(len(HOSTILE_NAMES))]
    for i, (epn, name) in enumerate(zip(unmapped, HOSTILE_NAMES, strict=True)):
        visits.append(
            {
                "id": 500 + i,
                "epn": epn,
                "start_time": "now-9d",
                "end_time": "now-8d",
                "principal_scientist": person_data(name, name, f"x{i}@example.edu"),
                "data_scientists": [person_data(name, "Smith", f'"><b>{i}</b>@example.edu')],
            }
        )
    data = {"equipment": [{**DEMO_EQUIPMENT[0], "visits": visits}, {**DEMO_EQUIPMENT[1], "visits": []}]}
    with PortalSimulator(data, strict=False) as portal:  # strict would refuse the empty EPN itself
        stack.configure(**{"base-url": portal.url})
        stack.lay_out("12282a", *unmapped, frames=1, size=1024)
        for name in HOSTILE_FOLDERS:  # hostile folder names on the SFTP host, each holding a file
            make_source_tree(stack.source, name, {"frames/img_0001.cbf": b"hostile"})
        outside_link = stack.root / "elsewhere"
        outside_link.mkdir()
        before, marks_before = _outside(stack), _marks()
        started = time.monotonic()

        # 1. The whole watch cycle: sensor rules, the repatriation worker, the alert e-mail.
        report = run_cycle(stack.config_path, stack.instance)
        assert report.skipped is None, report.skipped
        home = sorted(r.partition for r in report.by_job(REPATRIATION_JOB) if r.success)
        assert home == ["12282a"], report.runs
        assert [r.success for r in report.by_job(ALERT_JOB)] == [True], report.runs
        partitions = set(stack.instance.get_dynamic_partitions("epn"))
        bad_partitions = sorted(p for p in partitions if p in HOSTILE_EPNS)
        [message] = stack.smtp.wait_for(1)

        # 2. Each hostile EPN handed straight to the batch job (run config from the UI or an API call).
        job = build_definitions(str(stack.config_path)).resolve_job_def(REPATRIATION_JOB)
        accepted = []
        for epn in HOSTILE_EPNS:
            result = job.execute_in_process(
                run_config=batch_run_config([epn], execute=True),
                instance=stack.instance,
                raise_on_error=False,
            )
            if result.success:
                accepted.append(epn)

        # 3. Hostile project names: refused by config.yml's rules, and by the destination rule itself.
        config_accepted, destination_accepted = [], []
        good = yaml.safe_load(stack.config_path.read_text())
        for project in HOSTILE_PROJECTS:
            stack.config_path.write_text(yaml.safe_dump({**good, "epn_cap_map": {"12282": project}}))
            try:
                load_settings(stack.config_path)
                config_accepted.append(project)
            except ConfigError:
                pass
            try:
                destination_for("12282a", {"12282": project}, stack.destination_root)
                destination_accepted.append(project)
            except InvalidEpnError:
                pass
        stack.config_path.write_text(yaml.safe_dump(good))

        # 4. A project folder that is a symlink to a place outside the root: 12282b must not go there.
        stack.lay_out("12282b", frames=1, size=1024)
        stack.instance.add_dynamic_partitions("epn", ["12282b"])
        (stack.destination_root / "evil").symlink_to(outside_link)
        stack.configure(**{"base-url": portal.url, "epn_cap_map": {"12282": "evil", "13001": "ab12"}})
        visits.append(
            {
                "id": 2,
                "epn": "12282b",
                "start_time": "now-9d",
                "end_time": "now-8d",
                "principal_scientist": None,
                "data_scientists": [],
            }
        )
        linked = job.execute_in_process(
            run_config=batch_run_config(["12282b"], execute=True),
            instance=stack.instance,
            raise_on_error=False,
        )
        took = time.monotonic() - started

    after, marks_after = _outside(stack), _marks()
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    commands_run = sorted(set(marks_after) - set(marks_before))
    inside = sorted(
        str(p.relative_to(stack.destination_root))
        for p in stack.destination_root.rglob("*")
        if p.is_file() and ".rsync-partial" not in p.parts
    )
    html = message.get_body(("html",)).get_content()
    text = message.get_body(("plain",)).get_content()
    raw_html_hits = [n for n in HOSTILE_NAMES if ("<" in n or '"' in n) and n in html]
    literal = ["{{ 7*7 }}", "{% for x in range(3) %}JINJA{% endfor %}", "{{ config.__class__ }}"]
    jinja_ran = any("JINJAJINJA" in body or any(t not in body for t in literal) for body in (text, html))
    count = len(HOSTILE_EPNS) + len(HOSTILE_FOLDERS) + len(HOSTILE_PROJECTS) + len(HOSTILE_NAMES) + 1
    figure(
        f"hostile inputs: {count} inputs ({len(HOSTILE_EPNS)} EPN names in visits and run config, "
        f"{len(HOSTILE_FOLDERS)} folder names, {len(HOSTILE_PROJECTS)} project names, {len(HOSTILE_NAMES)} "
        f"scientist names, 1 symlinked project); {len(changed)} writes outside the destination root, "
        f"{len(commands_run)} commands run, {len(raw_html_hits)} unescaped HTML names, "
        f"template syntax evaluated: {jinja_ran}, {len(accepted)} hostile EPNs accepted by the job, "
        f"{len(config_accepted)} hostile projects accepted; {took:.0f} s"
    )
    assert changed == [], changed
    assert commands_run == []
    assert bad_partitions == [], "a hostile name became a partition"
    assert accepted == []
    assert config_accepted == [] and destination_accepted == []
    assert not linked.success, "data went through a symlinked project folder"
    assert not any(outside_link.iterdir())
    # Only the EPN's own folder (its data and its manifests); the repatriation report the cycle
    # rebuilt is in the instance's folder (its HTML escapes every name).
    assert all(p.startswith("ny79/12282a/") for p in inside), inside
    report_page = (Path(stack.instance.root_directory) / "reports" / "repatriation_report.html").read_text()
    assert [n for n in HOSTILE_NAMES if ("<" in n or '"' in n) and n in report_page] == []
    assert "&lt;script&gt;" in report_page
    assert raw_html_hits == [] and "&lt;script&gt;" in html
    assert not jinja_ran
    for epn in unmapped:
        assert epn in text
    assert "Siobhán Ó'Brien 李小龍 🚀" in text


@pytest.mark.slow
def test_a_portal_answer_of_20000_visits(stack):
    visits = [
        {
            "id": i,
            "epn": f"{20000 + i}a",
            "start_time": "now-9d",
            "end_time": "now-8d",
            "principal_scientist": person_data("A" * 50, "B" * 50, "someone@example.edu"),
            "data_scientists": [person_data("C", "D", "someone@example.edu")] * 3,
        }
        for i in range(20000)
    ]
    visits.append(
        {
            "id": 99999,
            "epn": "12282a",
            "start_time": "now-9d",
            "end_time": "now-8d",
            "principal_scientist": None,
            "data_scientists": [],
        }
    )
    data = {"equipment": [{**DEMO_EQUIPMENT[0], "visits": visits}, {**DEMO_EQUIPMENT[1], "visits": []}]}
    with PortalSimulator(data) as portal:
        stack.configure(**{"base-url": portal.url, "portal-timeout-seconds": 20})
        stack.lay_out("12282a", "20001a", frames=1, size=1024)
        before = _outside(stack)
        tick, _ = ticker(stack)
        started = time.monotonic()
        result = tick()
        took = time.monotonic() - started
        again = time.monotonic()
        tick()
        took_again = time.monotonic() - again
    after = _outside(stack)
    partitions = len(stack.instance.get_dynamic_partitions("epn"))
    written = [k for k in set(before) | set(after) if before.get(k) != after.get(k)]
    figure(
        f"hostile inputs: portal answer of {len(visits)} visits: first tick {took:.1f} s "
        f"(adds {partitions} partitions), next tick {took_again:.1f} s; "
        f"requested {requested_epns(result)}, {len(written)} writes outside the root"
    )
    assert isinstance(result, dg.SensorResult)
    assert requested_epns(result) == ["12282a"]
    assert took < 40, "a tick must fit the sensor deadline"
    assert before == after


def test_a_hostile_file_name_in_a_failure_email_is_escaped(stack):
    """A source folder whose file names are HTML and template syntax: the repatriation fails
    naming them (they cannot be read), and the failure e-mail shows them as text."""
    names = ["<img src=x onerror=alert(1)>", "{{ 7*7 }}", "{% for x in range(3) %}JINJA{% endfor %}"]
    stack.lay_out("12282a", frames=1, size=1024)
    for name in names:  # root's files the SFTP account cannot read: rsync fails naming them
        hostile = stack.source / "12282a" / "frames" / name
        hostile.write_bytes(b"x")
        hostile.chmod(0o600)
    result = stack.materialize("12282a")
    assert not result.success
    alert_on_failed_run(stack.instance, result.run_id)
    [message] = stack.smtp.wait_for(1)
    html = message.get_body(("html",)).get_content()
    text = message.get_body(("plain",)).get_content()
    named = [n for n in names if n in text]
    raw = "<img src=x" in html
    evaluated = "JINJAJINJA" in text or "JINJAJINJA" in html
    figure(
        f"hostile inputs: failure e-mail for {len(names)} hostile file names: {len(named)} named as text, "
        f"unescaped HTML: {raw}, template syntax evaluated: {evaluated}"
    )
    assert not raw  # whatever the e-mail names, never as live HTML
    if names[0] in text:
        assert "&lt;img src=x" in html
    assert not evaluated
    assert stack.ignored() == []


# -- what operators read: the report's CSV, the UI's markdown, the log files ------------------

FORGED = "2026-01-01 00:00:00,000 ERROR assyncy.sync EPN 99999a: FORGED"
# Scientists' names: formulas for a spreadsheet, markdown and HTML for the UI, forged log lines.
HOSTILE_SCIENTISTS = [
    ('=HYPERLINK("https://evil.example/n","click")', "Formula"),
    ("+1+cmd|' /C calc'!A0", "Plus"),
    ("-2+3", "Minus"),
    ("@SUM(1+1)", "At"),
    ("\t=1+1", "Tab"),
    ("[click](https://evil.example/x)", "![](https://evil.example/t.png)"),
    ("<img src=https://evil.example/i.png>", "**bold**"),
    (f"Line\n{FORGED}", f"Cr\r{FORGED}\x1b[2K"),
]
# File names at the source (no "/" in a name): rsync cannot read them, and the failure names them.
HOSTILE_FILES = [
    '=HYPERLINK("https:evil.example")',
    "[click](https:evil.example)",
    "![](https:evil.example?t.png)",
    "<img src=x onerror=alert(1)>",
    f"x\n{FORGED}",
]
# A portal's error message.
HOSTILE_PORTAL_ERROR = f"[click](https://evil.example/p) ![](https://evil.example/p.png) <b>x</b>\n{FORGED}\r\x1b[2K"
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
RECORD_START = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")
MARKDOWN = MarkdownIt("commonmark").enable("table").enable("strikethrough")


def _markdown_of_every_event(instance: dg.DagsterInstance) -> list[str]:
    """Every markdown metadata value any run of the instance recorded (materialisations,
    observations, check results, failures): what the UI renders as markdown."""
    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "Markdown" in str(node.get("__class__")) and isinstance(node.get("md_str"), str):
                found.append(node["md_str"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for run in instance.get_runs():
        for event in instance.all_logs(run.run_id):
            walk(json.loads(serialize_value(event)))
    return found


def _live_markup(markdown: str) -> list[str]:
    """What a markdown value would render as other than text and our own tables: links, images
    (but the report's own plot, a data: URI), HTML from outside."""
    page = MARKDOWN.render(markdown)
    tags = re.findall(r"<(/?[a-zA-Z][^>]*)>", page)
    ours = re.compile(r"/?(p|strong|code|table|thead|tbody|tr|th|td)$|img src=\"data:image/png;base64,")
    return [tag for tag in tags if not ours.match(tag)]


@pytest.mark.slow
def test_formula_markdown_and_newline_payloads_reach_no_operator_unneutralised(stack):
    visits = [
        {
            "id": 700 + i,
            "epn": f"12282{chr(ord('a') + i)}",
            "start_time": "now-9d",
            "end_time": "now-8d",
            "principal_scientist": person_data(first, last, f"p{i}@example.edu"),
            "data_scientists": [person_data(first, last, f"d{i}@example.edu")],
        }
        for i, (first, last) in enumerate(HOSTILE_SCIENTISTS)
    ]
    visits.append(
        {
            "id": 799,
            "epn": "13001a",
            "start_time": "now-9d",
            "end_time": "now-8d",
            "principal_scientist": person_data("Aroha", "Te Whare", "aroha@example.edu"),
            "data_scientists": [],
        }
    )
    data = {"equipment": [{**DEMO_EQUIPMENT[0], "visits": visits}, {**DEMO_EQUIPMENT[1], "visits": []}]}
    with PortalSimulator(data) as portal:
        stack.configure(**{"base-url": portal.url, "portal-retries": 0})
        settings = stack.settings()
        configure_logging(settings, "sync", console=False)  # as mxsync does; runs log through dagster.yaml
        stack.lay_out("12282a", "12282b", frames=1, size=1024)
        for name in HOSTILE_FILES:  # files the SFTP account cannot read: rsync fails naming them
            hostile = stack.source / "12282a" / "frames" / name
            hostile.write_bytes(b"x")
            hostile.chmod(0o600)

        # 1. A watch cycle: 12282a fails on its files, 12282b comes home, the report is rebuilt.
        cycle = run_cycle(stack.config_path, stack.instance)
        outcomes = {r.partition: r.success for r in cycle.by_job(REPATRIATION_JOB)}
        # 2. The portal answers with a hostile error: a tick (mxsync's log) and a repatriation fail on it.
        stack.lay_out("13001a", frames=1, size=1024)
        refusal = {"meta": {"error_message": HOSTILE_PORTAL_ERROR}}  # and no token
        portal.set_faults(body_next=100, body=refusal, path="oauth/token")
        skipped = run_cycle(stack.config_path, stack.instance).skipped
        batch = build_definitions(str(stack.config_path)).resolve_job_def(REPATRIATION_JOB)  # as from the UI
        failed = batch.execute_in_process(
            run_config=batch_run_config(["13001a"]),
            instance=stack.instance,
            raise_on_error=False,
        )
        portal.set_faults(body_next=0)
        # 3. The report, as the refresh sensor or the daily schedule builds it.
        result = dg.materialize([repatriation_report], instance=stack.instance, resources=build_resources())
    [event] = result.get_asset_materialization_events()
    metadata = event.step_materialization_data.materialization.metadata

    with open(metadata["csv"].value, newline="") as handle:
        rows = list(csv.DictReader(handle))
    by_epn = {row["epn"]: row for row in rows}
    formula_cells = [cell for row in rows for cell in row.values() if cell.startswith(FORMULA_START)]
    neutralised = sum(by_epn[f"12282{chr(ord('a') + i)}"]["principal_scientist"].startswith("'") for i in range(5))
    markdown = _markdown_of_every_event(stack.instance)
    live = [tag for md in markdown for tag in _live_markup(md)]
    shown = MARKDOWN.render(metadata["attention"].value).replace(WORD_JOINER, "")
    logs = {
        path.name: path.read_text()
        for path in (settings.log_files.sync, settings.log_files.epnalert, settings.log_files.email)
        if path.exists()
    }
    lines = [line for text in logs.values() for line in text.split("\n") if line]
    forged = [line for line in lines if not RECORD_START.match(line) and not line.startswith(LOG_INDENT)]
    raw_controls = [name for name, text in logs.items() if re.search("[\r\x1b\u2028]", text)]
    figure(
        "hostile inputs: formula, markdown and newline payloads in "
        f"{len(HOSTILE_SCIENTISTS)} scientists' names, {len(HOSTILE_FILES)} file names and 1 portal error: "
        f"{len(formula_cells)} CSV cells starting a formula ({neutralised} names neutralised with a quote), "
        f"{len(live)} live links, images or HTML in {len(markdown)} markdown values, "
        f"{len(forged)} forged log lines and {len(raw_controls)} log files with raw control characters "
        f"in {len(lines)} log lines"
    )
    assert outcomes == {"12282a": False, "12282b": True}, cycle.runs
    assert skipped and "FORGED" in skipped  # the tick said why, with the portal's words
    assert not failed.success
    # The CSV: every hostile name, file name and error is there, none as a formula.
    assert formula_cells == [], formula_cells
    assert neutralised == 5
    assert "https:evil.example" in by_epn["12282a"]["last_error"]  # a file name, as text
    assert "evil.example/p" in by_epn["13001a"]["last_error"], by_epn["13001a"]
    assert int(by_epn["12282b"]["source_files"]) >= 1  # counts stay numbers
    # The UI's markdown: the portal's error shown as text, nothing live.
    assert live == [], live
    assert "[click](https://evil.example/p)" in html.unescape(shown)
    # The log files: one record per line, the portal's words escaped within it.
    assert forged == [], forged
    assert raw_controls == []
    assert any("FORGED" in line and RECORD_START.match(line) for line in lines)
