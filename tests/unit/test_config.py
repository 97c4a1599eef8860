"""config.yml: the seed's file loads unchanged; every mistake is named at once."""

import shutil
from pathlib import Path

import pytest
import yaml

from assyncy_dagster.config import MASK, ConfigError, load_settings
from assyncy_dagster_demo.testing.stack import ETC


def write(tmp_path: Path, data: dict, name: str = "config.yml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def seed_data() -> dict:
    return yaml.safe_load((ETC / "config.yml").read_text())


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    return caught.value.problems


def test_seed_sample_config_loads_unchanged(tmp_path):
    shutil.copy(ETC / "config.yml", tmp_path / "config.yml")
    settings = load_settings(tmp_path / "config.yml")
    assert settings.epn_cap_map == {"12282": "ny79"}
    assert [e.id for e in settings.equipment] == [23, 24]
    assert settings.log_level == "DEBUG"
    assert settings.max_tasks == 1 and settings.visit_day_range == 200


def test_new_keys_have_seed_compatible_defaults(tmp_path):
    settings = load_settings(write(tmp_path, seed_data()))
    assert settings.sftp_user == "user_name"  # the first equipment's user, not a hard-coded address
    assert settings.ssh_port == 22
    assert settings.known_hosts_file is None
    assert settings.remote_root == "/data/mx"
    assert settings.execute is False
    assert (settings.smtp_host, settings.smtp_port) == ("smtp.domain.edu", 25)
    assert settings.smtp_starttls is False and settings.smtp_password is None


def test_smtp_host_port_and_plain_log_level(tmp_path):
    data = seed_data() | {"epnalert-email-smtp": "mail.example.org:2525", "log-level": "info"}
    settings = load_settings(write(tmp_path, data))
    assert (settings.smtp_host, settings.smtp_port, settings.log_level) == ("mail.example.org", 2525, "INFO")


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    settings = load_settings(write(tmp_path, seed_data()))
    assert settings.key_file == tmp_path / "your_path" / "etc" / "mx_key"
    assert settings.log_files.sync == tmp_path / "your_path" / "var" / "log" / "sync.log"
    assert settings.destination_root_path == Path("/scratch")


def test_every_mistake_is_reported_at_once_with_its_key_path(tmp_path):
    data = seed_data()
    del data["equipment"][1]["client_password"]
    data["epn_cap_map"]["12a"] = "ok"
    data["epn_cap_map"]["13000"] = "../escape"
    data["max-tasks"] = 0
    data["log-level"] = "logging.LOUD"
    data["sync-frequncy-hours"] = 3
    data["epnalert-email-smtp"] = "mail:notaport"
    problems = problems_of(write(tmp_path, data))
    expected = [
        "config.yml: equipment[1].client_password: missing",
        'config.yml: epn_cap_map."12a": not an EPN base number',
        "config.yml: epn_cap_map.\"13000\": '../escape' is not a safe project folder",
        "config.yml: max-tasks:",
        "config.yml: log-level:",
        "config.yml: sync-frequncy-hours: unknown setting",
        "config.yml: epnalert-email-smtp:",
    ]
    for prefix in expected:
        assert any(p.startswith(prefix) for p in problems), (prefix, problems)
    assert len(problems) == len(expected)


def test_env_references_resolve_and_unset_ones_are_named(tmp_path, monkeypatch):
    data = seed_data()
    data["equipment"][0]["password"] = "${PORTAL_PW}"
    data["smtp-password"] = "${SMTP_PW}"
    path = write(tmp_path, data)
    monkeypatch.setenv("PORTAL_PW", "s3cret-portal")
    monkeypatch.delenv("SMTP_PW", raising=False)
    assert problems_of(path) == ["config.yml: smtp-password: environment variable ${SMTP_PW} is not set"]
    monkeypatch.setenv("SMTP_PW", "s3cret-smtp")
    settings = load_settings(path)
    assert settings.equipment[0].password == "s3cret-portal"
    assert settings.smtp_password == "s3cret-smtp"


def test_masked_settings_hide_every_secret(tmp_path):
    data = seed_data() | {"smtp-password": "smtp-secret"}
    data["equipment"][0]["password"] = "portal-secret"
    data["equipment"][1]["client_password"] = "client-secret"
    settings = load_settings(write(tmp_path, data))
    text = repr(settings.masked()) + repr(settings.equipment) + str(settings.equipment[0])
    for secret in ("portal-secret", "client-secret", "smtp-secret"):
        assert secret not in text
    assert settings.masked()["equipment"][0]["password"] == MASK
    assert set(settings.secrets()) >= {"portal-secret", "client-secret", "smtp-secret"}


def test_missing_file_and_bad_yaml_are_clear(tmp_path):
    assert "config file not found" in problems_of(tmp_path / "nope.yml")[0]
    bad = tmp_path / "bad.yml"
    bad.write_text("epn_cap_map: [unclosed\n")
    assert "not valid YAML" in problems_of(bad)[0]


def test_no_config_path_and_no_env_is_clear(monkeypatch):
    monkeypatch.delenv("ASSYNCY_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="ASSYNCY_CONFIG"):
        load_settings(None)


def test_settings_repr_masks_the_smtp_password(tmp_path):
    data = seed_data() | {"smtp-username": "mailer", "smtp-password": "smtp-S3cret", "smtp-starttls": True}
    settings = load_settings(write(tmp_path, data))
    assert "smtp-S3cret" not in repr(settings) and "smtp-S3cret" not in str(settings)
    assert MASK in repr(settings)


def test_smtp_login_without_tls_is_refused_unless_allowed(tmp_path):
    data = seed_data() | {"smtp-username": "mailer", "smtp-password": "pw"}
    [problem] = problems_of(write(tmp_path, data))
    assert "smtp-username" in problem and "smtp-starttls: true" in problem
    allowed = load_settings(write(tmp_path, data | {"smtp-allow-plaintext-login": True}))
    assert allowed.insecure_warnings() == ["smtp-allow-plaintext-login: the SMTP password is sent without TLS"]


@pytest.mark.parametrize(
    "change, key",
    [({"base-url": "http://portal.example.edu"}, "base-url"), ({"verify-tls": False}, "verify-tls")],
)
def test_an_insecure_portal_is_refused_unless_allowed(tmp_path, change, key):
    data = seed_data() | change
    [problem] = problems_of(write(tmp_path, data))
    assert problem.startswith(f"config.yml: {key}") or f": {key}" in problem
    allowed = load_settings(write(tmp_path, data | {"portal-allow-insecure": True}))
    assert len(allowed.insecure_warnings()) == 1


def test_the_portal_answer_cap_is_64_mib_by_default_and_must_be_positive(tmp_path):
    assert load_settings(write(tmp_path, seed_data())).portal_max_answer_mib == 64
    assert load_settings(write(tmp_path, {**seed_data(), "portal-max-answer-mib": 0.5})).portal_max_answer_mib == 0.5
    [problem] = problems_of(write(tmp_path, {**seed_data(), "portal-max-answer-mib": 0}))
    assert problem.startswith("config.yml: portal-max-answer-mib"), problem


def test_the_report_goes_to_dagster_home_unless_report_dir_says_otherwise(tmp_path):
    settings = load_settings(write(tmp_path, seed_data()))
    home = tmp_path / "dagster_home"
    assert settings.report_path(home) == home / "reports"  # never a `reports` "project" in the root
    assert not settings.report_path(home).is_relative_to(settings.destination_root_path)
    chosen = load_settings(write(tmp_path, seed_data() | {"report-dir": "site-reports"}))
    assert chosen.report_path(home) == tmp_path / "site-reports"


def test_the_readmes_optional_keys_are_the_schemas_with_its_defaults():
    """README.md's "Optional keys" table names every key beyond the seed's sample, and each plain
    default (a number, true/false) as config.py has it, so that the two cannot drift apart."""
    import re

    from assyncy_dagster.config import Settings
    from tests.support.helpers import REPO

    text = (REPO / "README.md").read_text().split("Optional keys:", 1)[1]
    table = text.split("| --- | --- | --- |\n", 1)[1].split("\n\n", 1)[0]
    listed: dict[str, str] = {}
    for keys, defaults in re.findall(r"^\| (.+?) \| (.+?) \| .+ \|$", table, re.M):
        names = [k.strip("` ") for k in keys.split(",")]
        values = [d.strip() for d in defaults.split(",")] if len(names) > 1 else [defaults.strip()]
        listed.update(zip(names, values if len(values) == len(names) else [defaults] * len(names), strict=True))
    seed_keys = set(yaml.safe_load((ETC / "config.yml").read_text()))
    fields = {field.alias or name: field for name, field in Settings.model_fields.items()}

    assert set(listed) == set(fields) - seed_keys
    for key, shown in listed.items():
        default = fields[key].default
        if isinstance(default, bool):
            assert shown == str(default).lower(), key
        elif isinstance(default, int):
            assert shown == str(default), key
