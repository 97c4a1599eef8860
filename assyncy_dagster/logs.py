"""Log files as HPC ASSyncy kept them, with secrets masked.

`configure_logging(settings, "sync" | "epnalert")` gives the process the old
tool's files: `log-files.sync` (or `.epnalert`) for everything under the
`assyncy` loggers, and `log-files.email` for the mail logger, each rotated at
10 MB with 5 old files kept, at config.yml's `log-level`.

`RunLogFileHandler` does the same for Dagster runs started by the daemon: named
in dagster.yaml (`python_logs: dagster_handler_config`), it writes every run's
log lines to the same files.

Every handler made here masks the config's passwords and portal access tokens,
so they never reach a file, whatever a caller puts in a message or a traceback.
No Dagster imports.
"""

from __future__ import annotations

import fcntl
import logging
import logging.handlers
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

from .config import MASK, ConfigError, Settings, load_settings
from .escaping import log_block, log_text
from .names import ALERT_JOB

__all__ = [
    "BACKUP_COUNT",
    "COMPONENTS",
    "LOG_FORMAT",
    "MAX_BYTES",
    "LogSetupError",
    "RunLogFileHandler",
    "SecretMaskingFilter",
    "SharedRotatingFileHandler",
    "configure_logging",
]

COMPONENTS = ("sync", "epnalert")
# Our modules log under `assyncy.*`; `assyncy_dagster.*` covers modules named by `__name__`.
PACKAGE_LOGGERS = ("assyncy", "assyncy_dagster")
MAIL_LOGGERS = ("assyncy.mail", "assyncy_dagster.mail")
# The old tool's rotation: 10 MB per file, 5 old files.
MAX_BYTES = 10 * 1024 * 1024
BACKUP_COUNT = 5
# The process id tells apart the lines of runs that write to one file at once.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"

_TAG = "_assyncy_handler"
_CLEANED = "_assyncy_cleaned"
_TOKEN_PATTERNS = (
    # ?access_token=T in a request URL (urllib3 logs those at DEBUG)
    (re.compile(r"(access_token=)[^&\s\"'<>)]+"), r"\1" + MASK),
    # "access_token": "T" in a portal answer
    (re.compile(r"""(["']access_token["']\s*:\s*["'])[^"']+"""), r"\1" + MASK),
)
# Files that `configure_logging` writes `assyncy` records to in this process;
# `RunLogFileHandler` leaves those records alone there, or they would be written twice.
_direct_files: set[str] = set()


def tail(path: Path, lines: int = 30) -> str:
    """The last `lines` lines of a server's or a run's log file, for an error message; never raises."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


class LogSetupError(Exception):
    """A log file cannot be created or written; the message names it and what to fix."""


# -- masking ------------------------------------------------------------------


def _variants(secret: str) -> set[str]:
    """The forms a secret takes in log text: as is, URL-encoded, and escaped inside a repr()."""
    return {secret, quote(secret, safe=""), quote_plus(secret, safe=""), repr(secret)[1:-1]}


class SecretMaskingFilter(logging.Filter):
    """Replaces every secret, and every portal access token, in a record with `********`,
    and keeps each record on one line.

    Give it `settings.secrets()`. It rewrites the record in place (message with
    its arguments merged, traceback text, stack text), so every handler after it
    sees the masked text too. One compiled pattern per filter keeps it cheap.

    Messages carry text from outside (a portal's error message, a scientist's
    name, a file name from the SFTP host): their line breaks and other control
    characters are written as escapes (escaping.log_text), and a traceback's
    lines are indented (escaping.log_block), so that only a record's first line
    starts at column 0 and no message can forge a record of its own.
    """

    def __init__(self, secrets: Iterable[str] = ()):
        super().__init__()
        forms = {form for secret in secrets if secret for form in _variants(secret) if form}
        # Longest first, so a secret that contains another is masked whole.
        ordered = sorted(forms, key=len, reverse=True)
        self._secrets = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def mask(self, text: str) -> str:
        """`text` with every secret and access token replaced by `********`."""
        if self._secrets is not None:
            text = self._secrets.sub(MASK, text)
        if "access_token" in text:
            for pattern, replacement in _TOKEN_PATTERNS:
                text = pattern.sub(replacement, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            # A message whose arguments do not fit its format: keep the parts, masked.
            message = f"{record.msg} {record.args!r}"
        record.msg = log_text(self.mask(message))
        record.args = ()
        if record.exc_info and not record.exc_text:
            # Formatter.format() reuses exc_text, so the masked traceback is what gets written.
            record.exc_text = _FORMATTER.formatException(record.exc_info)
        if record.exc_text and not getattr(record, _CLEANED, False):
            record.exc_text = log_block(self.mask(record.exc_text))
        if record.stack_info and not getattr(record, _CLEANED, False):
            record.stack_info = log_block(self.mask(record.stack_info))
        # One record passes several of these filters (the run handler, then its file): indent once.
        setattr(record, _CLEANED, True)
        return True


_FORMATTER = logging.Formatter(LOG_FORMAT)


# -- files --------------------------------------------------------------------


class SharedRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A RotatingFileHandler that several processes may share safely.

    mxsync, its transfer workers and the daemon's runs all write the same
    file. Plain RotatingFileHandler would let each process rotate on its own
    and keep writing to the renamed file; here every write holds an flock on
    `<file>.lock`, reopens the file if another process has rotated it, and
    rotates only when the file on disk is full.
    """

    def __init__(self, filename: str | os.PathLike[str], max_bytes: int = MAX_BYTES, backup_count: int = BACKUP_COUNT):
        super().__init__(
            os.fspath(filename), maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8", delay=True
        )
        self._lock_path = self.baseFilename + ".lock"
        self._lock_file: Any = None

    def _open_lock(self) -> Any:
        if self._lock_file is None or self._lock_file.closed:
            self._lock_file = open(self._lock_path, "a")  # noqa: SIM115 - kept open for the handler's life
        return self._lock_file

    def _reopen_if_rotated(self) -> None:
        if self.stream is None:
            return
        try:
            on_disk = os.stat(self.baseFilename)
        except FileNotFoundError:
            on_disk = None
        mine = os.fstat(self.stream.fileno())
        if on_disk is None or (on_disk.st_dev, on_disk.st_ino) != (mine.st_dev, mine.st_ino):
            self.stream.close()
            self.stream = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record) + self.terminator
            lock = self._open_lock()
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._reopen_if_rotated()
                if self.stream is None:
                    self.stream = self._open()
                # The size on disk, not this process's position: others append too.
                size = os.fstat(self.stream.fileno()).st_size
                if self.maxBytes > 0 and size and size + len(text) >= self.maxBytes:
                    self.doRollover()
                    if self.stream is None:
                        self.stream = self._open()
                self.stream.write(text)
                self.stream.flush()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        self.acquire()
        try:
            if self._lock_file is not None:
                self._lock_file.close()
                self._lock_file = None
        finally:
            self.release()
        super().close()


def _check_writable(key: str, path: Path) -> Path:
    """Create the folder of a log file and make sure the file can be appended to."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LogSetupError(
            f"log-files.{key}: cannot create the folder {path.parent} for {path} ({exc.strerror or exc}); "
            f"create it writable for this user or point log-files.{key} in config.yml elsewhere"
        ) from None
    try:
        for name in (path, path.with_name(path.name + ".lock")):
            with open(name, "a", encoding="utf-8"):
                pass
    except OSError as exc:
        raise LogSetupError(
            f"log-files.{key}: cannot write {path} ({exc.strerror or exc}); "
            f"make it writable for this user or point log-files.{key} in config.yml elsewhere"
        ) from None
    return path


def _file_handler(path: Path, level: int, masking: SecretMaskingFilter) -> SharedRotatingFileHandler:
    handler = SharedRotatingFileHandler(path)
    return _finish(handler, level, masking)


def _finish(handler: logging.Handler, level: int, masking: SecretMaskingFilter) -> Any:
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(masking)
    setattr(handler, _TAG, True)
    return handler


def _remove_ours(logger: logging.Logger) -> None:
    for handler in list(logger.handlers):
        if getattr(handler, _TAG, False):
            logger.removeHandler(handler)
            handler.close()


def configure_logging(settings: Settings, component: str, *, console: bool = True) -> None:
    """Send the `assyncy` loggers to config.yml's log files, at its `log-level`.

    `component` is `sync` (mxsync) or `epnalert`: it picks `log-files.sync` or
    `log-files.epnalert` for all our loggers; `log-files.email` receives the
    mail logger as well. A missing log folder is created; one that cannot be
    created or written raises LogSetupError before anything changes. With
    `console`, the same lines go to stderr (the journal, under systemd).
    Calling it again replaces the handlers it added before.
    """
    if component not in COMPONENTS:
        raise ValueError(f"component must be one of {', '.join(COMPONENTS)}, got {component!r}")
    level = logging.getLevelName(settings.log_level)
    if not isinstance(level, int):
        raise ValueError(f"log-level: unknown level {settings.log_level!r}")
    main_path = getattr(settings.log_files, component)
    mail_path = settings.log_files.email
    # Check every file first, so a mistake leaves the previous set-up in place.
    main_path = _check_writable(component, main_path) if main_path else None
    mail_path = _check_writable("email", mail_path) if mail_path else None

    masking = SecretMaskingFilter(settings.secrets())
    for name in (*PACKAGE_LOGGERS, *MAIL_LOGGERS):
        _remove_ours(logging.getLogger(name))
    _direct_files.clear()

    package_handlers: list[logging.Handler] = []
    if main_path:
        package_handlers.append(_file_handler(main_path, level, masking))
        _direct_files.add(os.fspath(main_path))
    if console:
        package_handlers.append(_finish(logging.StreamHandler(sys.stderr), level, masking))
    for name in PACKAGE_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(level)
        for handler in package_handlers:
            logger.addHandler(handler)
    if mail_path:
        mail_handler = _file_handler(mail_path, level, masking)
        for name in MAIL_LOGGERS:
            logging.getLogger(name).addHandler(mail_handler)


# -- Dagster runs ------------------------------------------------------------


class _MaskFirst(logging.Handler):
    """Masks records on our package loggers and writes nothing.

    Put on a logger before Dagster attaches its capture handler (which stores
    records in the event log before any dagster.yaml handler sees them), it
    makes the event log receive the masked text too.
    """

    def emit(self, record: logging.LogRecord) -> None:
        pass


def _mask_first(masking: SecretMaskingFilter) -> None:
    for name in PACKAGE_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if isinstance(handler, _MaskFirst):
                logger.removeHandler(handler)
        guard = _MaskFirst()
        guard.addFilter(masking)
        logger.handlers.insert(0, guard)


class RunLogFileHandler(logging.Handler):
    """Writes Dagster run logs to config.yml's log files, secrets masked.

    For dagster.yaml, so that runs launched by the daemon log where mxsync
    did (`config` defaults to $ASSYNCY_CONFIG)::

        python_logs:
          managed_python_loggers: [assyncy]
          dagster_handler_config:
            handlers:
              assyncy_log_files:
                class: assyncy_dagster.logs.RunLogFileHandler

    Runs of the alert job (`alert_jobs`) go to `log-files.epnalert`, every other
    run to `log-files.sync`; a file not set in config.yml is skipped. The level
    is config.yml's `log-level` unless dagster.yaml gives one. The `assyncy`
    loggers get that level too if nothing else has set theirs (in a run worker
    nothing has, and they would drop INFO lines), and a masking step ahead of
    Dagster's own capture, so that secrets stay out of the event log as well.
    """

    def __init__(self, config: str | None = None, alert_jobs: Iterable[str] = (ALERT_JOB,)):
        try:
            settings = load_settings(config)
        except ConfigError as exc:
            raise LogSetupError(f"run log files: cannot read the config ({exc.path}):\n{exc}") from None
        level = logging.getLevelName(settings.log_level)
        super().__init__(level=level)
        self.alert_jobs = frozenset(alert_jobs)
        masking = SecretMaskingFilter(settings.secrets())
        self.addFilter(masking)
        self._targets: dict[str, SharedRotatingFileHandler | None] = {}
        for component in COMPONENTS:
            path = getattr(settings.log_files, component)
            self._targets[component] = SharedRotatingFileHandler(_check_writable(component, path)) if path else None
        self.setFormatter(logging.Formatter(LOG_FORMAT))
        for name in PACKAGE_LOGGERS:
            logger = logging.getLogger(name)
            if logger.level == logging.NOTSET:
                logger.setLevel(level)
        _mask_first(masking)

    def setFormatter(self, fmt: logging.Formatter | None) -> None:
        # dictConfig sets a `formatter:` given in dagster.yaml here; the files use it.
        super().setFormatter(fmt)
        for target in self._targets.values():
            if target is not None:
                target.setFormatter(fmt)

    def _component(self, record: logging.LogRecord) -> str:
        meta = getattr(record, "dagster_meta", None)
        job = meta.get("job_name") if isinstance(meta, dict) else None
        return "epnalert" if job in self.alert_jobs else "sync"

    def emit(self, record: logging.LogRecord) -> None:
        target = self._targets.get(self._component(record))
        if target is None:
            return
        if record.name.split(".")[0] in PACKAGE_LOGGERS and target.baseFilename in _direct_files:
            return  # configure_logging's handler in this process has written it already
        target.emit(record)

    def close(self) -> None:
        for target in self._targets.values():
            if target is not None:
                target.close()
        super().close()
