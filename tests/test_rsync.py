"""The rsync command line and the parsing of rsync's output: pure, no processes."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from assyncy_dagster.epn import InvalidEpnError
from assyncy_dagster.rsync import (
    RSYNC_EXIT_MEANINGS,
    HostKeyError,
    ListingEntry,
    RsyncError,
    SshConfigError,
    SshEndpoint,
    compare_manifests,
    list_command,
    local_manifest,
    parse_listing,
    parse_progress,
    parse_stats,
    run_rsync,
    transfer_command,
)


def endpoint(**overrides: object) -> SshEndpoint:
    values: dict[str, object] = dict(
        host="sftp.synchrotron.org.au",
        port=2222,
        user="help@massive.org.au",
        key_file=Path("/etc/assyncy/id_ed25519"),
        known_hosts_file=Path("/etc/assyncy/known_hosts"),
        source_root="/data/mx",
    )
    values.update(overrides)
    return SshEndpoint(**values)  # type: ignore[arg-type]


# -- ssh ----------------------------------------------------------------------


def test_ssh_command_is_key_only_batch_and_strict():
    cmd = endpoint().ssh_command()
    assert cmd[:5] == ["ssh", "-i", "/etc/assyncy/id_ed25519", "-p", "2222"]
    for option in ("IdentitiesOnly=yes", "BatchMode=yes", "StrictHostKeyChecking=yes",
                   "UserKnownHostsFile=/etc/assyncy/known_hosts", "GlobalKnownHostsFile=/dev/null"):
        assert cmd[cmd.index(option) - 1] == "-o"
    assert any(part.startswith("ConnectTimeout=") for part in cmd)
    assert any(part.startswith("ServerAliveInterval=") for part in cmd)


def test_ssh_command_without_known_hosts_file_uses_ssh_defaults():
    cmd = endpoint(known_hosts_file=None).ssh_command()
    assert not any("KnownHostsFile" in part for part in cmd)
    assert "StrictHostKeyChecking=yes" in cmd


def test_endpoint_from_settings_uses_configured_user_and_root():
    settings = SimpleNamespace(host="h.example", ssh_port=22, sftp_user="sync", key_file=Path("/k"),
                               known_hosts_file=None, remote_root="/data/mx")
    ep = SshEndpoint.from_settings(settings)
    assert (ep.host, ep.port, ep.user, ep.key_file, ep.known_hosts_file, ep.source_root) == (
        "h.example", 22, "sync", Path("/k"), None, "/data/mx")
    assert ep.remote("/data/mx/") == "sync@h.example:/data/mx/"


@pytest.mark.parametrize("path", ["/keys/my key", "/keys/it's", '/keys/"k"', "/keys/%h", "/keys/a\tb"])
def test_key_path_that_rsync_e_would_split_is_refused_with_the_setting_named(path):
    with pytest.raises(SshConfigError, match="key-file"):
        endpoint(key_file=Path(path))


def test_known_hosts_path_with_space_is_refused_with_the_setting_named():
    with pytest.raises(SshConfigError, match="known-hosts-file"):
        endpoint(known_hosts_file=Path("/etc/my hosts"))


@pytest.mark.parametrize("field,value", [("host", "-oProxyCommand=x"), ("host", "a b"), ("user", "-l"),
                                         ("user", "a b"), ("port", 0), ("source_root", "data/mx"),
                                         ("source_root", "/data/../etc")])
def test_unsafe_endpoint_values_are_refused(field, value):
    with pytest.raises(SshConfigError):
        endpoint(**{field: value})


def test_missing_key_file_is_named(tmp_path):
    ep = endpoint(key_file=tmp_path / "nope", known_hosts_file=None)
    with pytest.raises(SshConfigError, match=str(tmp_path / "nope")):
        ep.check_files()


# -- commands -----------------------------------------------------------------


def test_transfer_command_has_the_intended_flags_as_separate_arguments(tmp_path):
    argv = transfer_command(endpoint(), "12282a", tmp_path / "ny79" / "12282a" / "data", dry_run=False)
    assert argv[0] == "rsync"
    for flag in ("-r", "-t", "--stats", "--chmod=Dg+s,ug+w,o-wx,ug+X,Fug-st", "--perms", "--size-only",
                 "--partial-dir=.rsync-partial", "--mkpath", "--no-h", "--info=progress2"):
        assert flag in argv
    assert argv[argv.index("--include") + 1] == ".info"
    assert argv[argv.index("--exclude") + 1] == ".*"
    assert argv.index("--include") < argv.index("--exclude"), "first matching filter wins"
    assert "--dry-run" not in argv
    assert "-P" not in argv and "--partial" not in argv and "--inplace" not in argv
    assert not any(a.startswith("-a") or a == "-stats" for a in argv)


def test_transfer_command_ends_with_shell_source_and_destination(tmp_path):
    argv = transfer_command(endpoint(), "12282a", tmp_path / "data", dry_run=True)
    assert "--dry-run" in argv
    assert argv[-4] == "-e"
    assert argv[-3] == " ".join(endpoint().ssh_command())
    assert argv[-2] == "help@massive.org.au@sftp.synchrotron.org.au:/data/mx/12282a/"
    assert argv[-1] == f"{tmp_path / 'data'}/"


def test_transfer_command_makes_relative_destination_absolute():
    argv = transfer_command(endpoint(), "12282a", Path("-rf"), dry_run=True)
    assert argv[-1].startswith("/") and argv[-1].endswith("/-rf/")


@pytest.mark.parametrize("epn", ["../../x", "12282a;rm -rf x", "..weird", "notanepn", "", "12282A"])
def test_transfer_command_refuses_invalid_epn(epn, tmp_path):
    with pytest.raises(InvalidEpnError):
        transfer_command(endpoint(), epn, tmp_path, dry_run=True)


def test_transfer_command_passes_extra_args_before_the_paths(tmp_path):
    argv = transfer_command(endpoint(), "12282a", tmp_path, dry_run=False, extra_args=["--bwlimit=1m"])
    assert argv.index("--bwlimit=1m") < argv.index("-e")


def test_list_command_recursive_uses_the_transfer_filters():
    argv = list_command(endpoint(), "/data/mx/12282a/", recursive=True)
    assert argv[:3] == ["rsync", "--list-only", "--no-h"]
    assert "-r" in argv and argv[argv.index("--include") + 1] == ".info"
    assert argv[-1] == "help@massive.org.au@sftp.synchrotron.org.au:/data/mx/12282a/"


def test_list_command_top_level_is_not_recursive_or_filtered():
    argv = list_command(endpoint(), "/data/mx/", recursive=False)
    assert "-r" not in argv and "--exclude" not in argv


# -- parsing ------------------------------------------------------------------

LISTING = (
    "drwxr-xr-x        4096 2026/11/28 00:02:39 .\n"
    "-rw-r--r--           1 2026/11/28 00:02:39 .info\n"
    "lrwxrwxrwx           6 2026/11/28 00:02:39 link\n"
    "-rw-r--r--           1 2026/11/28 00:02:39 weird\\#012name\n"
    "-rw-r--r--           1 2026/11/28 00:02:39 \\#303\\#274tf\n"
    "drwxr-xr-x        4096 2026/11/28 00:02:39 frames\n"
    "-rw-r--r--        1000 2026/11/28 00:02:39 frames/img 0002.cbf\n"
    "-rw-r--r--   3,000,000 2026/11/28 00:02:39 frames/img_0001.cbf\n"
    "skipping non-regular file \"link\"\n"
)


def test_parse_listing_keeps_names_with_spaces_and_marks_symlinks():
    entries = parse_listing(LISTING)
    assert ListingEntry("frames/img 0002.cbf", 1000, False) in entries
    assert ListingEntry("frames", 4096, True) in entries
    assert ListingEntry("link", 6, False, is_symlink=True) in entries
    assert not any(e.path == "." for e in entries)


def test_parse_listing_reads_grouped_sizes_and_escaped_names():
    by_path = {e.path: e for e in parse_listing(LISTING)}
    assert by_path["frames/img_0001.cbf"].size == 3_000_000
    assert "weird\nname" in by_path
    assert "ütf" in by_path


def test_parse_listing_drops_symlink_target():
    (entry,) = parse_listing("lrwxrwxrwx          6 2026/11/28 00:02:39 latest -> 12282a\n")
    assert entry.path == "latest" and entry.is_symlink


STATS = """
Number of files: 10 (reg: 6, dir: 3, link: 1)
Number of created files: 8 (reg: 6, dir: 2)
Number of deleted files: 0
Number of regular files transferred: 6
Total file size: 301010 bytes
Total transferred file size: 301004 bytes
Literal data: 301004 bytes
Matched data: 0 bytes
File list size: 212
File list generation time: 0.001 seconds
File list transfer time: 0.000 seconds
Total bytes sent: 198
Total bytes received: 301572

sent 198 bytes  received 301572 bytes  603540.00 bytes/sec
total size is 301010  speedup is 1.00
"""


def test_parse_stats_reads_the_totals():
    stats = parse_stats(STATS)
    assert stats.files_transferred == 6
    assert stats.bytes_transferred == 301004
    assert stats.total_files == 10
    assert stats.total_regular_files == 6
    assert stats.total_dirs == 3
    assert stats.total_size == 301010
    assert stats.literal_data == 301004
    assert stats.matched_data == 0
    assert stats.bytes_received == 301572


def test_parse_stats_handles_digit_grouping():
    stats = parse_stats("Number of files: 12,345 (reg: 12,000, dir: 345)\n"
                        "Number of regular files transferred: 1,234\nTotal file size: 1,234,567,890 bytes\n")
    assert (stats.total_files, stats.total_regular_files, stats.files_transferred, stats.total_size) == (
        12345, 12000, 1234, 1234567890)


def test_parse_progress_reads_bytes_rate_and_file_counts():
    update = parse_progress("         301004  99%  287.06MB/s    0:00:00 (xfr#6, to-chk=2/10)")
    assert update is not None
    assert update.bytes_transferred == 301004
    assert update.percent == 99
    assert update.rate_bytes_per_second == pytest.approx(287.06 * 1024 * 1024)
    assert (update.files_transferred, update.files_to_check, update.files_total) == (6, 2, 10)
    assert update.files_checked == 8 and update.listing_complete


def test_parse_progress_without_file_counts_and_during_scan():
    first = parse_progress("              0   0%    0.00kB/s    0:00:00  ")
    assert first is not None and first.files_total is None
    scanning = parse_progress("  1,024   1%   1.00kB/s    0:01:00 (xfr#1, ir-chk=100/200)")
    assert scanning is not None and not scanning.listing_complete and scanning.bytes_transferred == 1024


def test_parse_progress_ignores_other_lines():
    assert parse_progress("Total file size: 100% bytes") is None
    assert parse_progress("-rw-r--r-- 1 2026/11/28 00:02:39 50% off.cbf") is None


# -- manifests ----------------------------------------------------------------


def test_local_manifest_applies_the_transfer_filter_at_every_level(tmp_path):
    for relative, content in {
        "frames/img_0001.cbf": b"abc",
        ".info": b"i",
        "frames/.info": b"ii",
        ".DS_Store": b"x",
        "frames/._img_0001.cbf": b"x",
        ".rsync-partial/big.cbf": b"x",
        "frames/.big.cbf.Ab12Cd": b"x",
        ".snapshot/old.cbf": b"x",
    }.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    (tmp_path / "link").symlink_to("frames")
    assert local_manifest(tmp_path) == {"frames/img_0001.cbf": 3, ".info": 1, "frames/.info": 2}


def test_local_manifest_of_missing_destination_is_empty(tmp_path):
    assert local_manifest(tmp_path / "absent") == {}


def test_compare_manifests_reports_missing_and_size_mismatch_but_tolerates_extra():
    diff = compare_manifests({"a": 1, "b": 2, "c": 3}, {"a": 1, "b": 5, "z": 9})
    assert not diff.ok
    assert diff.missing == ["c"]
    assert diff.size_mismatch == [("b", 2, 5)]
    assert diff.extra == ["z"]
    summary = diff.summary()
    assert "1 missing" in summary and "missing: c" in summary and "b (source 2 bytes, destination 5 bytes)" in summary
    assert compare_manifests({"a": 1}, {"a": 1, "z": 2}).ok


def test_manifest_summary_is_limited():
    diff = compare_manifests({f"f{i:03d}": 1 for i in range(100)}, {})
    summary = diff.summary(limit=5)
    assert summary.count("missing:") == 5 and "95 more missing" in summary


# -- exit codes (a real child process, but no rsync) --------------------------


def test_every_documented_rsync_exit_code_has_a_meaning():
    for code in (0, 1, 2, 3, 4, 5, 6, 10, 11, 12, 13, 14, 20, 21, 22, 23, 24, 25, 30, 35, 255):
        assert RSYNC_EXIT_MEANINGS[code]


def _fake_rsync(tmp_path: Path, stderr: str, code: int) -> list[str]:
    # A stand-in for rsync's exit behaviour: exit codes and stderr cannot be forced from real rsync cheaply.
    script = tmp_path / "fake.sh"
    script.write_text(f"#!/bin/sh\nprintf '%s' '{stderr}' >&2\nexit {code}\n")
    script.chmod(0o755)
    return [str(script)]


def test_partial_transfer_error_names_code_meaning_and_stderr(tmp_path):
    argv = _fake_rsync(tmp_path, 'rsync: [sender] send_files failed to open "x": Permission denied (13)\n', 23)
    with pytest.raises(RsyncError) as info:
        run_rsync(argv, description="transfer of EPN 12282a")
    message = str(info.value)
    assert info.value.exit_code == 23
    assert "transfer of EPN 12282a" in message and "partial transfer" in message and "Permission denied" in message


def test_host_key_mismatch_is_a_host_key_error_pointing_at_known_hosts(tmp_path):
    argv = _fake_rsync(tmp_path, "@@@@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n"
                                 "Host key verification failed.\n", 255)
    with pytest.raises(HostKeyError) as info:
        run_rsync(argv, endpoint=endpoint())
    assert "known-hosts-file /etc/assyncy/known_hosts" in str(info.value)
