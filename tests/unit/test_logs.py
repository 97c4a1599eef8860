"""Log files: where lines go, at which level, how they rotate, and that secrets never get there."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from urllib.parse import quote

import pytest

from assyncy_dagster.config import MASK, load_settings
from assyncy_dagster.escaping import LOG_INDENT
from assyncy_dagster.logs import (
    BACKUP_COUNT,
    MAX_BYTES,
    LogSetupError,
    RunLogFileHandler,
    SecretMaskingFilter,
    SharedRotatingFileHandler,
    configure_logging,
)
from tests.support.helpers import (
    CLIENT_PASSWORD,
    PORTAL_PASSWORD,
    SMTP_PASSWORD,
    TOKEN,
    config_with_secrets,
    log_text,
)


def settings_for(tmp_path: Path, **kwargs):
    return load_settings(config_with_secrets(tmp_path, **kwargs))


# -- files and levels ----------------------------------------------------------


def test_sync_log_holds_info_lines_but_not_debug_at_info_level(tmp_path):
    settings = settings_for(tmp_path)
    configure_logging(settings, "sync", console=False)
    logging.getLogger("assyncy.sync").info("EPN 12282a: transferred")
    logging.getLogger("assyncy.portal").debug("visits answer in detail")
    text = log_text(settings.log_files.sync)
    assert "EPN 12282a: transferred" in text and " INFO assyncy.sync " in text
    assert "visits answer in detail" not in text


def test_debug_lines_reach_the_file_when_log_level_is_debug(tmp_path):
    settings = settings_for(tmp_path, log_level="logging.DEBUG")
    configure_logging(settings, "sync", console=False)
    logging.getLogger("assyncy.portal").debug("visits answer in detail")
    assert "visits answer in detail" in log_text(settings.log_files.sync)


def test_epnalert_component_writes_the_epnalert_file_only(tmp_path):
    settings = settings_for(tmp_path)
    configure_logging(settings, "epnalert", console=False)
    logging.getLogger("assyncy.epnalert").info("unknown EPNs: 14500a")
    assert "unknown EPNs: 14500a" in log_text(settings.log_files.epnalert)
    assert not settings.log_files.sync.exists()


def test_mail_lines_go_to_the_email_log_as_well(tmp_path):
    settings = settings_for(tmp_path)
    configure_logging(settings, "sync", console=False)
    logging.getLogger("assyncy.mail").info("mail sent to helpdesk@example.edu")
    logging.getLogger("assyncy.sync").info("not about mail")
    assert "mail sent to helpdesk@example.edu" in log_text(settings.log_files.email)
    assert "not about mail" not in log_text(settings.log_files.email)
    assert "mail sent to helpdesk@example.edu" in log_text(settings.log_files.sync)


def test_console_copy_goes_to_stderr(tmp_path, capfd):
    settings = settings_for(tmp_path)
    configure_logging(settings, "sync", console=True)
    logging.getLogger("assyncy.sync").warning("disk nearly full")
    assert "disk nearly full" in capfd.readouterr().err


def test_files_rotate_at_10_mb_keeping_5_old_files(tmp_path):
    settings = settings_for(tmp_path)
    configure_logging(settings, "sync", console=False)
    files = [h for h in logging.getLogger("assyncy").handlers if isinstance(h, SharedRotatingFileHandler)]
    assert [(h.baseFilename, h.maxBytes, h.backupCount) for h in files] == [
        (str(settings.log_files.sync), 10 * 1024 * 1024, 5)
    ]
    assert (MAX_BYTES, BACKUP_COUNT) == (10 * 1024 * 1024, 5)


def test_a_full_file_is_rotated_and_the_oldest_dropped(tmp_path):
    handler = SharedRotatingFileHandler(tmp_path / "sync.log", max_bytes=200, backup_count=2)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for i in range(40):
        handler.emit(logging.makeLogRecord({"msg": f"line {i:02d} " + "x" * 30}))
    handler.close()
    assert sorted(p.name for p in tmp_path.glob("sync.log*") if not p.name.endswith(".lock")) == [
        "sync.log",
        "sync.log.1",
        "sync.log.2",
    ]
    assert all(p.stat().st_size <= 200 for p in tmp_path.glob("sync.log*"))
    assert "line 39" in (tmp_path / "sync.log").read_text()


def test_missing_log_folder_is_created(tmp_path):
    settings = settings_for(tmp_path, log_dir=tmp_path / "deep" / "new" / "log")
    configure_logging(settings, "sync", console=False)
    logging.getLogger("assyncy.sync").info("first line")
    assert "first line" in log_text(tmp_path / "deep" / "new" / "log" / "sync.log")


def test_unwritable_log_folder_raises_log_setup_error_naming_the_path(tmp_path):
    # A regular file where a folder should be: root cannot write there either (chmod would not stop root).
    (tmp_path / "file.txt").write_text("not a folder")
    settings = settings_for(tmp_path, log_dir=tmp_path / "file.txt" / "log")
    with pytest.raises(LogSetupError) as caught:
        configure_logging(settings, "sync", console=False)
    message = str(caught.value)
    assert str(tmp_path / "file.txt" / "log" / "sync.log") in message
    assert "log-files.sync" in message and "Not a directory" in message


def test_failed_setup_keeps_the_previous_log_files(tmp_path):
    good = settings_for(tmp_path / "good")
    configure_logging(good, "sync", console=False)
    (tmp_path / "file.txt").write_text("not a folder")
    with pytest.raises(LogSetupError):
        configure_logging(settings_for(tmp_path / "bad", log_dir=tmp_path / "file.txt" / "log"), "sync", console=False)
    logging.getLogger("assyncy.sync").info("still logging")
    assert "still logging" in log_text(good.log_files.sync)


def test_configuring_twice_writes_each_line_once(tmp_path):
    settings = settings_for(tmp_path)
    configure_logging(settings, "sync", console=True)
    configure_logging(settings, "sync", console=True)
    logging.getLogger("assyncy.sync").info("only once")
    assert log_text(settings.log_files.sync).count("only once") == 1
    assert len(logging.getLogger("assyncy").handlers) == 2  # the file and the console


def test_unknown_component_is_refused(tmp_path):
    with pytest.raises(ValueError, match="sync, epnalert"):
        configure_logging(settings_for(tmp_path), "mxsync", console=False)


# -- secrets -------------------------------------------------------------------


def test_passwords_never_reach_the_log_files(tmp_path):
    settings = settings_for(tmp_path, log_level="logging.DEBUG")
    configure_logging(settings, "sync", console=False)
    logging.getLogger("assyncy.portal").debug("auth form: username=mx password=%s", PORTAL_PASSWORD)
    logging.getLogger("assyncy.portal").debug("basic auth (%r, %r)", "mx-client", CLIENT_PASSWORD)
    logging.getLogger("assyncy.portal").debug("posted body password=%s", quote(CLIENT_PASSWORD, safe=""))
    logging.getLogger("assyncy.mail").info(f"login as assyncy with {SMTP_PASSWORD}")
    text = log_text(settings.log_files.sync) + log_text(settings.log_files.email)
    assert log_text(settings.log_files.sync).count(MASK) == 4
    for secret in (PORTAL_PASSWORD, CLIENT_PASSWORD, quote(CLIENT_PASSWORD, safe=""), SMTP_PASSWORD):
        assert secret not in text


def test_access_tokens_in_urls_and_answers_never_reach_the_log_files(tmp_path):
    settings = settings_for(tmp_path, log_level="logging.DEBUG")
    configure_logging(settings, "sync", console=False)
    logging.getLogger("assyncy.portal").debug(
        "GET https://portal.example/api/v1/equipment/23/visits?access_token=%s&start_time=2026-01-01 401", TOKEN
    )
    logging.getLogger("assyncy.portal").debug("auth answer %s", {"data": {"access_token": TOKEN}})
    text = log_text(settings.log_files.sync)
    assert TOKEN not in text
    assert f"access_token={MASK}&start_time=2026-01-01" in text
    assert f"'access_token': '{MASK}'" in text


def test_secrets_in_tracebacks_never_reach_the_log_files(tmp_path):
    settings = settings_for(tmp_path)
    configure_logging(settings, "sync", console=False)

    def login(password: str) -> None:
        raise RuntimeError(f"login refused for password {password}")

    try:
        login(SMTP_PASSWORD)
    except RuntimeError:
        logging.getLogger("assyncy.mail").exception("sending failed")
    text = log_text(settings.log_files.sync) + log_text(settings.log_files.email)
    assert "Traceback" in text and "RuntimeError: login refused for password " + MASK in text
    assert SMTP_PASSWORD not in text


def test_masking_filter_also_protects_handlers_after_it():
    masking = SecretMaskingFilter([PORTAL_PASSWORD])
    record = logging.makeLogRecord({"msg": "password is %s", "args": (PORTAL_PASSWORD,)})
    assert masking.filter(record) is True
    assert record.getMessage() == f"password is {MASK}"


def test_secret_containing_another_is_masked_whole():
    masking = SecretMaskingFilter(["abc", "abcdef"])
    assert masking.mask("x abcdef y abc") == f"x {MASK} y {MASK}"


def test_run_log_handler_names_a_broken_config(tmp_path):
    with pytest.raises(LogSetupError, match="cannot read the config"):
        RunLogFileHandler(config=str(tmp_path / "missing.yml"))


# -- one record, one line ------------------------------------------------------------


RECORD_START = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


def test_text_from_outside_cannot_forge_a_log_record(tmp_path):
    settings = settings_for(tmp_path)
    configure_logging(settings, "sync", console=False)
    forged = "\n2026-01-01 00:00:00,000 ERROR assyncy.sync EPN 99999a: FORGED\r\x1b[2K"
    logging.getLogger("assyncy.portal").warning("portal refresh failed: %s", f"bad password{forged}")
    try:
        raise RuntimeError(f"portal says{forged}")
    except RuntimeError:
        logging.getLogger("assyncy.sync").exception("refresh failed")
    lines = log_text(settings.log_files.sync).splitlines()
    assert [line for line in lines if RECORD_START.match(line)] == [
        line for line in lines if not line.startswith(LOG_INDENT)
    ]
    assert len([line for line in lines if RECORD_START.match(line)]) == 2
    assert not any(line.startswith("2026-01-01") for line in lines)  # inside a traceback: indented
    assert "bad password\\n2026-01-01 00:00:00,000 ERROR assyncy.sync EPN 99999a: FORGED\\r\\x1b[2K" in lines[0]
    assert any(line.startswith(LOG_INDENT + "RuntimeError: portal says") for line in lines)
    assert not any(c in "\r\x1b" for line in lines for c in line)
