"""What a watch cycle says of each EPN (mxsync's log, the demo's summary): a run that left its EPN
to another run, or held it back as empty, did not transfer it, though neither is a failure."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

from assyncy_dagster.cycle import CycleReport, RunOutcome, _log_outcome
from assyncy_dagster.names import REPATRIATION_JOB
from assyncy_dagster.outcomes import Outcome
from assyncy_dagster_demo.demo import print_report

HOME = RunOutcome(
    REPATRIATION_JOB,
    "13001a",
    "run-a",
    True,
    metadata={"files_transferred": 3, "bytes_transferred": 3072, "destination": "/scratch/ab12/13001a/data"},
    outcome=Outcome.HOME.value,
)
# The other lane's run, whose batch held 13001a: run-a took it while run-b waited to start.
LEFT = RunOutcome(REPATRIATION_JOB, "13001a", "run-b", True, outcome=Outcome.SKIPPED.value)
EMPTY = RunOutcome(REPATRIATION_JOB, "13001b", "run-b", True, outcome=Outcome.EMPTY.value)


def test_the_demo_says_which_run_transferred_an_epn_and_that_the_other_left_it(tmp_path: Path, capsys):
    report = CycleReport(runs=[HOME, LEFT, EMPTY])
    print_report(report, tmp_path, tmp_path, tmp_path, once=False)
    said = capsys.readouterr().out
    assert said.count("transferred 13001a") == 1
    assert "transferred 13001a: 3 files, 3 KiB -> /scratch/ab12/13001a/data" in said
    assert "13001a: left to another run, which had it" in said
    assert "transferred 13001b" not in said and "13001b: held back: its folder holds no files yet" in said


def test_the_cycle_log_says_a_run_left_its_epn_to_another_run(caplog):
    logger = logging.getLogger("test.cycle")
    with caplog.at_level(logging.INFO, logger="test.cycle"):
        for outcome in (HOME, LEFT):
            _log_outcome(logger, outcome)
    assert caplog.messages == [
        "EPN 13001a: run run-a succeeded",
        "EPN 13001a: run run-b: left to another run, which had it",
    ]


def test_the_outcome_survives_the_worker_s_report():
    """A worker process prints its outcomes as JSON (worker.py) and the cycle reads them back."""
    assert [RunOutcome(**asdict(o)) for o in (HOME, LEFT)] == [HOME, LEFT]
    assert HOME.not_done_here == "" and LEFT.not_done_here
