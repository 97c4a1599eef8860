"""Log files: where lines go, at which level, how they rotate, and that secrets never get there."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.parse import quote

import dagster as dg
import pytest
import yaml

from assyncy_dagster import logs
from assyncy_dagster.config import MASK, load_settings
from assyncy_dagster.logs import (
    BACKUP_COUNT,
    MAX_BYTES,
    LogSetupError,
    RunLogFileHandler,
    SecretMaskingFilter,
    SharedRotatingFileHandler,
    configure_logging,
)

ETC = Path(__file__).resolve().parent.parent / "etc"
PORTAL_PASSWORD = "Portal-Pa55word!"
CLIENT_PASSWORD = "Cl1ent/Secret&more"
SMTP_PASSWORD = "smtp-S3cret"
TOKEN = "tok-1234567890abcdef"
SECRETS = (PORTAL_PASSWORD, CLIENT_PASSWORD, SMTP_PASSWORD, TOKEN)


def write_config(tmp_path: Path, log_level: str = "logging.INFO", log_dir: Path | None = None) -> Path:
    data = yaml.safe_load((ETC / "config.yml").read_text())
    data["equipment"] = [
        {"username": "mx@example.edu", "password": PORTAL_PASSWORD, "client_name": "mx-client",
         "client_password": CLIENT_PASSWORD, "id": 23},
    ]
    data["smtp-username"] = "assyncy"
    data["smtp-password"] = SMTP_PASSWORD
    data["smtp-starttls"] = True
    data["log-level"] = log_level
    log_dir = log_dir or tmp_path / "var" / "log"
    data["log-files"] = {name: str(log_dir / f"{name}.log") for name in ("sync", "epnalert", "email")}
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def settings_for(tmp_path: Path, **kwargs):
    return load_settings(write_config(tmp_path, **kwargs))


def log_text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


@pytest.fixture(autouse=True)
def restore_loggers():
    """configure_logging changes process-wide loggers; put them back after each test."""
    names = (*logs.PACKAGE_LOGGERS, *logs.MAIL_LOGGERS)
    saved = {name: (logging.getLogger(name).level, list(logging.getLogger(name).handlers)) for name in names}
    try:
        yield
    finally:
        for name, (level, handlers) in saved.items():
            logger = logging.getLogger(name)
            for handler in logger.handlers:
                if handler not in handlers:
                    handler.close()
            logger.handlers[:] = handlers
            logger.setLevel(level)
        logs._direct_files.clear()


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
        "sync.log", "sync.log.1", "sync.log.2"
    ]
    assert all(p.stat().st_size <= 200 for p in tmp_path.glob("sync.log*"))
    assert "line 39" in (tmp_path / "sync.log").read_text()


_WRITER = textwrap.dedent(
    """
    import logging, sys
    from assyncy_dagster.logs import SharedRotatingFileHandler
    handler = SharedRotatingFileHandler(sys.argv[1], max_bytes=1000, backup_count=50)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for i in range(300):
        handler.emit(logging.makeLogRecord({"msg": f"{sys.argv[2]} {i:04d}"}))
    """
)


def test_processes_sharing_a_file_lose_no_line_across_rotations(tmp_path):
    log = tmp_path / "sync.log"
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, str(log), f"w{n}"]) for n in range(3)]
    assert [w.wait(timeout=60) for w in writers] == [0, 0, 0]
    files = [p for p in tmp_path.glob("sync.log*") if not p.name.endswith(".lock")]
    lines = [line for p in files for line in p.read_text().splitlines()]
    assert sorted(lines) == sorted(f"w{n} {i:04d}" for n in range(3) for i in range(300))
    assert len(files) > 5  # 7,200 bytes in files of at most 1,000: rotated several times
    assert all(p.stat().st_size <= 1000 for p in files)


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


# -- Dagster run logs ----------------------------------------------------------



@dg.op
def _talk(context) -> None:
    context.log.info(f"op says hello with {PORTAL_PASSWORD}")
    logging.getLogger("assyncy.portal").info("GET /visits?access_token=%s 200", TOKEN)
    logging.getLogger("assyncy.portal").debug("debug detail from the portal")


@dg.job(name="repatriate_epn")
def _repatriation_like():
    _talk()


@dg.job(name="unknown_epn_alert")
def _alert_like():
    _talk()


@pytest.fixture
def run_logging_instance(tmp_path, monkeypatch):
    config = write_config(tmp_path)
    monkeypatch.setenv("ASSYNCY_CONFIG", str(config))
    home = tmp_path / "dagster_home"
    home.mkdir()
    # The python_logs lines as shipped in etc/dagster-postgres.yaml, on the single-host instance.
    instance_config = yaml.safe_load((ETC / "dagster.yaml").read_text())
    instance_config["python_logs"] = yaml.safe_load((ETC / "dagster-postgres.yaml").read_text())["python_logs"]
    (home / "dagster.yaml").write_text(yaml.safe_dump(instance_config))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        yield load_settings(config), instance


def test_run_logs_land_in_the_sync_log_masked(run_logging_instance):
    settings, instance = run_logging_instance
    result = _repatriation_like.execute_in_process(instance=instance)
    text = log_text(settings.log_files.sync)
    assert result.run_id in text
    assert "op says hello with " + MASK in text
    assert f"access_token={MASK} 200" in text
    assert "debug detail from the portal" not in text  # log-level INFO
    assert PORTAL_PASSWORD not in text and TOKEN not in text
    assert not settings.log_files.epnalert.exists() or result.run_id not in log_text(settings.log_files.epnalert)


def test_alert_run_logs_land_in_the_epnalert_log(run_logging_instance):
    settings, instance = run_logging_instance
    result = _alert_like.execute_in_process(instance=instance)
    assert "op says hello" in log_text(settings.log_files.epnalert)
    assert result.run_id not in log_text(settings.log_files.sync)


def test_managed_assyncy_lines_in_the_event_log_are_masked(run_logging_instance):
    _, instance = run_logging_instance
    result = _repatriation_like.execute_in_process(instance=instance)
    messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any(f"access_token={MASK}" in m for m in messages)
    assert not any(TOKEN in m for m in messages)


def test_run_lines_are_written_once_when_the_process_logs_to_the_same_file(run_logging_instance):
    settings, instance = run_logging_instance
    configure_logging(settings, "sync", console=False)
    _repatriation_like.execute_in_process(instance=instance)
    assert log_text(settings.log_files.sync).count(f"access_token={MASK} 200") == 1


def test_run_log_handler_names_a_broken_config(tmp_path):
    with pytest.raises(LogSetupError, match="cannot read the config"):
        RunLogFileHandler(config=str(tmp_path / "missing.yml"))
