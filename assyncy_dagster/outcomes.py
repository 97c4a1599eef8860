"""What a repatriation run did with one EPN: the one vocabulary of the runs' tags (run_records.py),
the plan (planning.RunHistory), the report (report.py) and the e-mails, so that nothing translates
it from one set of words into another on the way. Standard library only."""

from __future__ import annotations

import enum


class Outcome(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    HOME = "home"
    DRY_RUN = "dry-run"
    FAILED = "failed"
    SKIPPED = "skipped"  # another run was transferring it: not an attempt of this run
    EMPTY = "empty"  # the source folder held no files: held back, looked at again after the backoff

    @property
    def in_flight(self) -> bool:
        """Its run has not ended with it yet."""
        return self in (Outcome.QUEUED, Outcome.RUNNING)

    @property
    def succeeded(self) -> bool:
        """Its run brought it home, or listed it in a dry-run."""
        return self in (Outcome.HOME, Outcome.DRY_RUN)

    @property
    def moved_nothing(self) -> str:
        """Why its run, without failing it, moved nothing of it ("" for the other outcomes): another
        run had it (in a cycle, often the other lane, which took it from this run's batch while
        this run waited to start), or its folder held no files yet."""
        if self is Outcome.SKIPPED:
            return "left to another run, which had it"
        if self is Outcome.EMPTY:
            return "held back: its folder holds no files yet"
        return ""
