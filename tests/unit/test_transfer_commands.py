"""The rsync command lines (transfer/commands.py): pure, no processes."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from assyncy_dagster.epn import InvalidEpnError
from assyncy_dagster.transfer.commands import list_command, transfer_command
from tests.support.helpers import facility_endpoint


def test_transfer_command_has_the_intended_flags_as_separate_arguments(tmp_path):
    argv = transfer_command(facility_endpoint(), "12282a", tmp_path / "ny79" / "12282a" / "data", dry_run=False)
    assert argv[0] == "rsync"
    for flag in (
        "-r",
        "-t",
        "--stats",
        "--chmod=Dg+s,ug+w,o-wx,ug+X,Fug-st",
        "--perms",
        "--checksum-choice=xxh128",
        "--partial-dir=.rsync-partial",
        "--mkpath",
        "--no-h",
        "--info=progress2",
    ):
        assert flag in argv
    # The quick check compares size and mtime: a frame rewritten at the same size comes again.
    assert "--size-only" not in argv and "--checksum" not in argv
    assert argv[argv.index("--include") + 1] == ".info"
    assert argv[argv.index("--exclude") + 1] == ".*"
    assert argv.index("--include") < argv.index("--exclude"), "first matching filter wins"
    assert "--dry-run" not in argv
    assert "-P" not in argv and "--partial" not in argv and "--inplace" not in argv
    assert not any(a.startswith("-a") or a == "-stats" for a in argv)


def test_transfer_command_ends_with_shell_source_and_destination(tmp_path):
    argv = transfer_command(facility_endpoint(), "12282a", tmp_path / "data", dry_run=True)
    assert "--dry-run" in argv
    assert argv[-4] == "-e"
    assert argv[-3] == " ".join(facility_endpoint().ssh_command())
    assert argv[-2] == "help@massive.org.au@sftp.synchrotron.org.au:/data/mx/12282a/"
    assert argv[-1] == f"{tmp_path / 'data'}/"


def test_transfer_command_makes_relative_destination_absolute():
    argv = transfer_command(facility_endpoint(), "12282a", Path("-rf"), dry_run=True)
    assert argv[-1].startswith("/") and argv[-1].endswith("/-rf/")


@pytest.mark.parametrize("epn", ["../../x", "12282a;rm -rf x", "..weird", "notanepn", "", "12282A"])
def test_transfer_command_refuses_invalid_epn(epn, tmp_path):
    with pytest.raises(InvalidEpnError):
        transfer_command(facility_endpoint(), epn, tmp_path, dry_run=True)


def test_transfer_command_passes_extra_args_before_the_paths(tmp_path):
    argv = transfer_command(facility_endpoint(), "12282a", tmp_path, dry_run=False, extra_args=["--bwlimit=1m"])
    assert argv.index("--bwlimit=1m") < argv.index("-e")


def test_list_command_recursive_uses_the_transfer_filters():
    argv = list_command(facility_endpoint(), "/data/mx/12282a/", recursive=True)
    assert argv[:3] == ["rsync", "--list-only", "--no-h"]
    assert "-r" in argv and argv[argv.index("--include") + 1] == ".info"
    assert argv[-1] == "help@massive.org.au@sftp.synchrotron.org.au:/data/mx/12282a/"


def test_list_command_top_level_is_not_recursive_or_filtered():
    argv = list_command(facility_endpoint(), "/data/mx/", recursive=False)
    assert "-r" not in argv and "--exclude" not in argv


def test_md5_and_a_full_checksum_pass_are_asked_by_name(tmp_path):
    argv = transfer_command(
        facility_endpoint(), "12282a", tmp_path / "d", dry_run=False, checksum_algorithm="md5", full_checksum=True
    )
    assert "--checksum-choice=md5" in argv and "--checksum" in argv


def test_the_readmes_rsync_line_is_the_one_the_code_builds(tmp_path):
    """README's "The transfer" shows the command; it must not drift from transfer_command."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = readme.split("### The transfer", 1)[1].split("```", 2)[1]
    shown = shlex.split(block.replace("\\\n", " ").replace("[--checksum]", "").replace("[--dry-run]", ""))
    argv = transfer_command(facility_endpoint(), "12282a", tmp_path / "data", dry_run=False)
    built = argv[: argv.index("-e")]
    assert shown[: shown.index("-e")] == built
