"""The one schema of config.yml, HPC ASSyncy's file plus a few optional keys.

`load_settings(path)` returns a validated `Settings` or raises `ConfigError`
listing every mistake at once, each as `config.yml: key.path: problem`.
No Dagster imports: the CLI, the resources and the tests share this module.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from .epn import is_valid_base_number, is_valid_project
from .statefiles import load_yaml
from .transfer.commands import ChecksumAlgorithm

CONFIG_ENV = "ASSYNCY_CONFIG"
MASK = "********"
# `portal-max-answer-mib`: a year of visits of a busy beamline is well under 1 MiB.
DEFAULT_PORTAL_MAX_ANSWER_MIB = 64
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(Exception):
    """config.yml is missing or wrong; `problems` holds one line per mistake."""

    def __init__(self, path: Path | str, problems: list[str]):
        self.path = Path(path)
        self.problems = problems
        super().__init__("\n".join(problems))


def _hyphenate(name: str) -> str:
    return name.replace("_", "-")


class Equipment(BaseModel):
    """One beamline's portal account (the seed's `equipment` entries)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: int
    username: str = Field(min_length=1)
    password: str = Field(min_length=1)
    client_name: str = Field(min_length=1)
    client_password: str = Field(min_length=1)

    def __repr__(self) -> str:  # never print the secrets by accident
        return f"Equipment(id={self.id}, username={self.username!r})"

    __str__ = __repr__


class LogFiles(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sync: Path | None = None
    epnalert: Path | None = None
    email: Path | None = None


class Settings(BaseModel):
    """Everything config.yml says, validated, with paths made absolute."""

    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=_hyphenate, populate_by_name=True)

    comment: str | None = None
    epn_cap_map: dict[str, str] = Field(default_factory=dict, alias="epn_cap_map")
    ignore: Path
    equipment: list[Equipment] = Field(min_length=1)
    base_url: str
    beamline: str = Field(default="mx", pattern=r"^[A-Za-z0-9_-]+$")

    epnalert_email_to: str = Field(min_length=3)
    epnalert_email_from: str = Field(min_length=3)
    epnalert_email_smtp: str = Field(min_length=1)
    epnalert_template_folder: Path
    epnalert_template_text: str = "epnalert-text.j2"
    epnalert_template_html: str = "epnalert-html.j2"

    visit_day_range: int = Field(default=200, gt=0)
    key_file: Path
    host: str = Field(min_length=1)
    destination_root_path: Path
    sync_frequency_hours: float = Field(default=24, gt=0)
    max_tasks: int = Field(default=1, ge=1)
    log_level: str = "INFO"
    log_files: LogFiles = Field(default_factory=LogFiles)

    # Optional keys the seed did not have.
    sftp_username: str | None = None
    ssh_port: int = Field(default=22, ge=1, le=65535)
    known_hosts_file: Path | None = None
    source_root: str | None = None
    execute: bool = False
    smtp_starttls: bool = False
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_timeout_seconds: float = Field(default=30, gt=0)
    alerted_file: Path | None = None
    dagster_ui_url: str | None = None
    portal_timeout_seconds: float = Field(default=30, gt=0)
    portal_retries: int = Field(default=3, ge=0)
    portal_max_answer_mib: float = Field(default=DEFAULT_PORTAL_MAX_ANSWER_MIB, gt=0)
    verify_tls: bool = True
    retry_backoff_minutes: float = Field(default=30, gt=0)
    rsync_bwlimit_kib: int | None = Field(default=None, gt=0)
    timezone: str | None = None
    max_epns_per_run: int = Field(default=50, ge=1, le=500)
    stale_run_hours: float = Field(default=24, gt=0)
    smtp_allow_plaintext_login: bool = False
    portal_allow_insecure: bool = False
    transfer_streams: int = Field(default=1, ge=1, le=16)
    transfer_streams_min_mib: float = Field(default=1024, ge=0)
    resync_days: float = Field(default=7, ge=0)
    create_project_folders: bool = False
    stuck_after_hours: float = Field(default=24, gt=0)
    report_dir: Path | None = None
    # The content checksum recorded per file (rsync's sender computes it while sending):
    # xxh128 (`xxhsum -c`) or md5 (the EPN folder is then a BagIt bag).
    checksum_algorithm: ChecksumAlgorithm = "xxh128"
    # The fixity audit (fixity.py): how fast it reads at home, and how often it runs.
    fixity_max_mib_per_second: float = Field(default=200, gt=0)

    def __repr_args__(self):  # never print the SMTP password by accident (Equipment masks its own)
        for name, value in super().__repr_args__():
            yield name, (MASK if name == "smtp_password" and value else value)

    @model_validator(mode="after")
    def _secrets_travel_encrypted(self) -> Settings:
        problems = []
        if self.smtp_username and not self.smtp_starttls and not self.smtp_allow_plaintext_login:
            problems.append(
                "smtp-username: logging in without TLS would send the SMTP password in clear; "
                "set smtp-starttls: true (or, on a trusted network only, smtp-allow-plaintext-login: true)"
            )
        if not self.portal_allow_insecure:
            if not self.base_url.lower().startswith("https://"):
                problems.append(
                    f"base-url: {self.base_url!r} is not https://: the portal passwords would travel in clear "
                    "(for a local stand-in only, set portal-allow-insecure: true)"
                )
            if not self.verify_tls:
                problems.append(
                    "verify-tls: false lets anyone on the path pose as the portal and take its passwords "
                    "(for a local stand-in only, also set portal-allow-insecure: true)"
                )
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def insecure_warnings(self) -> list[str]:
        """What an admin allowed that weakens security; said at every start."""
        warnings = []
        if self.portal_allow_insecure and not self.base_url.lower().startswith("https://"):
            warnings.append(f"portal-allow-insecure: the portal is reached over plain HTTP ({self.base_url})")
        if self.portal_allow_insecure and not self.verify_tls:
            warnings.append("portal-allow-insecure: the portal's TLS certificate is not verified (verify-tls: false)")
        if self.smtp_allow_plaintext_login and self.smtp_username and not self.smtp_starttls:
            warnings.append("smtp-allow-plaintext-login: the SMTP password is sent without TLS")
        return warnings

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {value!r} (use an IANA name, e.g. Australia/Melbourne)") from None
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level(cls, value: Any) -> str:
        text = str(value).strip()
        text = text.removeprefix("logging.")
        if text.upper() not in _LOG_LEVELS:
            raise ValueError(f"expected one of {', '.join(_LOG_LEVELS)} (or logging.DEBUG form), got {value!r}")
        return text.upper()

    @field_validator("epn_cap_map", mode="before")
    @classmethod
    def _keys_as_strings(cls, value: Any) -> Any:
        # YAML reads an unquoted 12282 as an int; the seed's sample quotes it, users may not.
        if isinstance(value, dict):
            return {str(k): v for k, v in value.items()}
        return value

    @field_validator("epnalert_email_smtp")
    @classmethod
    def _smtp_address(cls, value: str) -> str:
        host, _, port = value.rpartition(":") if ":" in value else (value, "", "")
        if ":" in value and (not host or not port.isdigit() or not 0 < int(port) < 65536):
            raise ValueError(f"expected host or host:port, got {value!r}")
        return value

    @field_validator("epn_cap_map")
    @classmethod
    def _cap_map(cls, value: dict[str, str]) -> dict[str, str]:
        problems = []
        for base, project in value.items():
            if not is_valid_base_number(base):
                problems.append(f'epn_cap_map."{base}": not an EPN base number (digits only, e.g. "12282")')
            if not is_valid_project(project):
                problems.append(
                    f'epn_cap_map."{base}": {project!r} is not a safe project folder name (no "/", no "..", not empty)'
                )
        if problems:
            raise ValueError("\n".join(problems))
        return value

    # -- derived values: one place each ------------------------------------

    @property
    def sftp_user(self) -> str:
        return self.sftp_username or self.equipment[0].username

    @property
    def remote_root(self) -> str:
        return self.source_root or f"/data/{self.beamline}"

    @property
    def smtp_host(self) -> str:
        host, colon, _ = self.epnalert_email_smtp.rpartition(":")
        return host if colon else self.epnalert_email_smtp

    @property
    def smtp_port(self) -> int:
        _, colon, port = self.epnalert_email_smtp.rpartition(":")
        return int(port) if colon else 25

    def report_path(self, dagster_home: Path) -> Path:
        """Where the repatriation report's CSV, PNG and HTML go: `report-dir`, else `reports` in
        the Dagster instance's folder (DAGSTER_HOME). Never under `destination-root-path` by
        default: every folder there is a project's (a project named `reports` would collide)."""
        return self.report_dir or dagster_home / "reports"

    @property
    def alerted_path(self) -> Path:
        """State file of EPNs the helpdesk has been told about (beside ignore.yml by default)."""
        return self.alerted_file or self.ignore.with_name("alerted.yml")

    @property
    def schedule_timezone(self) -> str:
        """`timezone`, else the host's (TZ, /etc/timezone), else UTC: the daily digest runs at 01:00 there."""
        for candidate in (self.timezone, os.environ.get("TZ"), _host_timezone()):
            if candidate:
                try:
                    ZoneInfo(candidate)
                    return candidate
                except (ZoneInfoNotFoundError, ValueError):
                    continue
        return "UTC"

    @property
    def sync_interval_seconds(self) -> int:
        return max(1, int(self.sync_frequency_hours * 3600))

    def secrets(self) -> list[str]:
        """Every secret value in the config, for log masking."""
        values = [e.password for e in self.equipment] + [e.client_password for e in self.equipment]
        if self.smtp_password:
            values.append(self.smtp_password)
        return [v for v in values if v]

    def masked(self) -> dict[str, Any]:
        """The resolved settings as config.yml keys, with every secret replaced by a mask."""
        data = self.model_dump(mode="json", by_alias=True)
        for item in data["equipment"]:
            item["password"] = MASK
            item["client_password"] = MASK
        if data.get("smtp-password"):
            data["smtp-password"] = MASK
        return data


def _host_timezone() -> str | None:
    try:
        return Path("/etc/timezone").read_text().strip() or None
    except OSError:
        return None


_PATH_KEYS = (
    "ignore",
    "epnalert-template-folder",
    "key-file",
    "destination-root-path",
    "known-hosts-file",
    "alerted-file",
    "report-dir",
)


def _format_loc(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text


def _substitute_env(value: Any, loc: tuple[Any, ...], problems: list[str]) -> Any:
    """Resolve `${VAR}` in every string, naming each unset variable with its key path."""
    if isinstance(value, dict):
        return {k: _substitute_env(v, (*loc, k), problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute_env(v, (*loc, i), problems) for i, v in enumerate(value)]
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in os.environ:
                problems.append(f"{_format_loc(loc)}: environment variable ${{{name}}} is not set")
                return match.group(0)
            return os.environ[name]

        return _ENV_REF.sub(replace, value)
    return value


def _resolve_paths(data: dict[str, Any], folder: Path) -> None:
    for key in _PATH_KEYS:
        if isinstance(data.get(key), str) and data[key]:
            data[key] = str((folder / Path(data[key]).expanduser()).absolute())
    logs = data.get("log-files")
    if isinstance(logs, dict):
        for key, value in logs.items():
            if isinstance(value, str) and value:
                logs[key] = str((folder / Path(value).expanduser()).absolute())


def _describe(error: ErrorDetails) -> str:
    kind = error["type"]
    if kind == "missing":
        return "missing"
    if kind == "extra_forbidden":
        return "unknown setting (check the spelling against etc/config.yml)"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def config_path_from_env(path: str | os.PathLike[str] | None = None) -> Path:
    """The config file to use: an explicit path, else $ASSYNCY_CONFIG."""
    if path:
        return Path(path)
    env = os.environ.get(CONFIG_ENV)
    if not env:
        raise ConfigError(CONFIG_ENV, [f"no config file given: pass --config PATH or set {CONFIG_ENV}"])
    return Path(env)


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read, resolve and validate config.yml; raise ConfigError listing every problem."""
    path = config_path_from_env(path)
    name = path.name
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(path, [f"{path}: config file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, [f"{path}: cannot read: {exc}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError(path, [f"{name}: not valid YAML: {exc}"]) from None
    if not isinstance(raw, dict):
        raise ConfigError(path, [f"{name}: expected a mapping of settings at the top level"])

    problems: list[str] = []
    data = _substitute_env(raw, (), problems)
    _resolve_paths(data, path.absolute().parent)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            if error["loc"] in (("epn_cap_map",), ()) and error["type"] == "value_error":
                problems.extend(_describe(error).splitlines())
                continue
            problems.append(f"{_format_loc(error['loc'])}: {_describe(error)}")
        settings = None
    if problems:
        raise ConfigError(path, [f"{name}: {p}" for p in problems])
    assert settings is not None
    return settings
