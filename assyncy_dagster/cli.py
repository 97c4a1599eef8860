"""The `assyncy` command (check-config, add-epn, fixity-audit, and the subcommands other
distributions add: `demo` and `portal-sim` from assyncy-dagster-demo) and the seed's `mxsync` and
`epnalert` commands."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import stat
import sys
import tempfile
import threading
from importlib.metadata import entry_points

import yaml

from .config import CONFIG_ENV, ConfigError, Settings, load_settings
from .epn import InvalidEpnError, project_for, validate_epn


def _config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help=f"path to config.yml (default: ${CONFIG_ENV})")


def _fail(message: str) -> int:
    print(message, file=sys.stderr)
    return 2


def _invalid_epns(values: list[str]) -> list[str]:
    """Why each of `values` is not an EPN name (all of them, so one run names every mistake)."""
    bad = []
    for value in values:
        try:
            validate_epn(value)
        except InvalidEpnError as exc:
            bad.append(str(exc))
    return bad


# -- check-config -----------------------------------------------------------


def environment_problems(settings: Settings) -> list[str]:
    """What the config points at but is not there or not usable."""
    from .alerts.checking import check_templates

    problems = []
    key = settings.key_file
    if not key.is_file():
        problems.append(f"key-file: {key} does not exist")
    elif stat.S_IMODE(key.stat().st_mode) & 0o077:
        problems.append(f"key-file: {key} is readable by group or others; ssh refuses it (chmod 600 {key})")
    if settings.known_hosts_file and not settings.known_hosts_file.is_file():
        problems.append(f"known-hosts-file: {settings.known_hosts_file} does not exist")
    problems += [
        f"epnalert-template-folder: {p}"
        for p in check_templates(
            settings.epnalert_template_folder, settings.epnalert_template_text, settings.epnalert_template_html
        )
    ]
    root = settings.destination_root_path
    if not root.is_dir():
        problems.append(f"destination-root-path: {root} does not exist")
    else:
        try:
            with tempfile.TemporaryFile(dir=root):
                pass
        except OSError as exc:
            problems.append(f"destination-root-path: {root} is not writable ({exc.strerror})")
    if not settings.ignore.parent.is_dir():
        problems.append(f"ignore: folder {settings.ignore.parent} does not exist")
    return problems


def check_config(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        return _fail(f"config is invalid:\n{exc}")
    print(yaml.safe_dump(settings.masked(), sort_keys=False, default_flow_style=False), end="")
    for warning in settings.insecure_warnings():
        print(f"WARNING: {warning}", file=sys.stderr)
    problems = environment_problems(settings)
    if problems:
        return _fail("problems:\n" + "\n".join(f"- {p}" for p in problems))
    print("config OK")
    return 0


# -- add-epn ----------------------------------------------------------------


def add_epn(args: argparse.Namespace) -> int:
    from dagster import DagsterInstance

    from .partitions import EPN_PARTITIONS_NAME

    bad = _invalid_epns(args.epns)
    if bad:
        return _fail("refused, nothing added:\n" + "\n".join(f"- {b}" for b in bad))
    if not os.environ.get("DAGSTER_HOME"):
        return _fail("DAGSTER_HOME is not set: partitions would go to a throwaway instance")
    settings = None
    if args.config or os.environ.get(CONFIG_ENV):
        try:
            settings = load_settings(args.config)
        except ConfigError as exc:
            return _fail(f"config is invalid:\n{exc}")
    instance = DagsterInstance.get()
    existing = set(instance.get_dynamic_partitions(EPN_PARTITIONS_NAME))
    new = [e for e in dict.fromkeys(args.epns) if e not in existing]
    if new:
        instance.add_dynamic_partitions(EPN_PARTITIONS_NAME, new)
    for epn in dict.fromkeys(args.epns):
        state = "added" if epn in new else "already present"
        note = ""
        if settings is not None:
            project = project_for(epn, settings.epn_cap_map)
            note = f" -> project {project}" if project else " (not mapped in epn_cap_map: it will not be repatriated)"
        print(f"{epn}: {state}{note}")
    return 0


# -- fixity-audit -------------------------------------------------------------


def fixity_audit(args: argparse.Namespace) -> int:
    """The fixity_audit job, run in this process against the instance in $DAGSTER_HOME (so the UI
    shows the run and each partition's intact_at_home result), for the EPNs named or every recorded
    one. Prints one line per EPN; exit status 1 when an EPN is damaged or the audit cannot run."""
    from dagster import AssetCheckEvaluation, DagsterInstance

    from .definitions import build_definitions
    from .names import FIXITY_JOB
    from .run_records import step_failure_message

    bad = _invalid_epns(args.epns)
    if bad:
        return _fail("refused, nothing audited:\n" + "\n".join(f"- {b}" for b in bad))
    if not os.environ.get("DAGSTER_HOME"):
        return _fail("DAGSTER_HOME is not set: the audit's results would go to a throwaway instance")
    try:
        job = build_definitions(args.config).resolve_job_def(FIXITY_JOB)
    except ConfigError as exc:
        return _fail(f"config is invalid:\n{exc}")
    run_config = {"ops": {"audit_fixity": {"config": {"epns": list(dict.fromkeys(args.epns))}}}}
    with DagsterInstance.get() as instance:
        result = job.execute_in_process(instance=instance, run_config=run_config, raise_on_error=False)
    for event in result.all_events:
        evaluation = event.event_specific_data
        if isinstance(evaluation, AssetCheckEvaluation):
            warning = evaluation.severity.value == "WARN"  # no manifest: nothing could be read
            verdict = "intact" if evaluation.passed else "warning" if warning else "damaged"
            first = (evaluation.description or "").splitlines()[0].removeprefix(f"EPN {evaluation.partition}: ")
            print(f"{evaluation.partition}: {verdict}: {first}")
    if not result.success:
        print(step_failure_message(result.all_events) or f"fixity audit: run {result.run_id} failed", file=sys.stderr)
        return 1
    print(f"fixity audit: nothing damaged (run {result.run_id})")
    return 0


# -- mxsync and epnalert: the old tool's commands ------------------------------


def _settings_and_logging(config: str | None, component: str) -> Settings:
    from .logs import LogSetupError, configure_logging

    try:
        settings = load_settings(config)
        configure_logging(settings, component)
    except (ConfigError, LogSetupError) as exc:
        raise SystemExit(_fail(f"{component}: {exc}")) from None
    for warning in settings.insecure_warnings():
        logging.getLogger(f"assyncy.{component}").warning(f"{component}: {warning}")
    return settings


@contextlib.contextmanager
def _dagster_home():
    """The instance in $DAGSTER_HOME, so runs show in the UI; else a throwaway one
    (ignore.yml stays the record of what is repatriated)."""
    from dagster import DagsterInstance

    if os.environ.get("DAGSTER_HOME"):
        with DagsterInstance.get() as instance:
            yield instance
        return
    with tempfile.TemporaryDirectory(prefix="mxsync-dagster-home-") as home:
        os.environ["DAGSTER_HOME"] = home
        try:
            with DagsterInstance.get() as instance:
                yield instance
        finally:
            del os.environ["DAGSTER_HOME"]


def mxsync(args: argparse.Namespace) -> int:
    from .cycle import Workers, run_cycle
    from .transfer import terminate_all_transfers

    settings = _settings_and_logging(args.config, "sync")
    log = logging.getLogger("assyncy.sync")
    if not args.execute:
        note = " (config.yml's execute: true applies to the sensor, not to mxsync)" if settings.execute else ""
        log.warning(f"dry-run: rsync runs with --dry-run; pass --execute to copy{note}")
    workers = Workers()
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.warning(f"{signal.Signals(signum).name}: stopping transfers; nothing unverified is recorded")
        stop.set()
        workers.stop()
        terminate_all_transfers()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with _dagster_home() as instance:
        while True:
            report = run_cycle(args.config, instance, execute=args.execute, logger=log, workers=workers, alerts=False)
            if stop.is_set():
                return 0
            if args.once:
                if report.failed:
                    names = ", ".join(r.partition or r.job for r in report.failed)
                    return _fail(f"mxsync: {len(report.failed)} EPN(s) failed: {names}")
                return 0
            log.info(f"next cycle in {settings.sync_frequency_hours} h")
            if stop.wait(settings.sync_interval_seconds):
                return 0


def epnalert(args: argparse.Namespace) -> int:
    from .epnalert import ALERT_ERRORS, send_unknown_epn_alert, unmapped_epns_on_host
    from .mail import Mailer
    from .portal.client import PortalClient
    from .transfer import RsyncClient, SshEndpoint

    settings = _settings_and_logging(args.config, "epnalert")
    log = logging.getLogger("assyncy.epnalert")
    try:
        epns = unmapped_epns_on_host(settings, RsyncClient(SshEndpoint.from_settings(settings), logger=log))
        with PortalClient.from_settings(settings, logger=log) as portal:
            sent = send_unknown_epn_alert(
                settings, portal, Mailer.from_settings(settings), epns, digest=True, logger=log
            )
    except (*ALERT_ERRORS, ValueError) as exc:
        log.error(f"epnalert failed: {exc}")
        return _fail(f"epnalert: {exc}")
    if sent:
        print(
            f"sent 'Unknown ownership of EPNs' about {len(sent)} EPN(s) to {settings.epnalert_email_to}: "
            f"{', '.join(sent)}"
        )
    else:
        print("no unmapped EPNs on the SFTP host: nothing sent")
    return 0


def mxsync_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mxsync", description="ASSyncy: a tool to repatriate data from the Australian Synchrotron."
    )
    _config_argument(parser)
    parser.add_argument("--execute", action="store_true", help="If not set, rsync --dry-run executes")
    parser.add_argument("--once", action="store_true", help="run one cycle and exit (non-zero if any EPN failed)")
    return mxsync(parser.parse_args(argv))


def epnalert_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="epnalert",
        description="EpnAlert: a tool to notify users of new EPNs awaiting data repatriation "
        "from the Australian Synchrotron.",
    )
    _config_argument(parser)
    return epnalert(parser.parse_args(argv))


# -- entry points -----------------------------------------------------------


# Subcommands another distribution adds: an entry point in this group names a function that takes
# the subparsers and adds its own (the demo distribution adds `demo` and `portal-sim`). The product
# never imports them; without that distribution they say what to install.
COMMANDS_GROUP = "assyncy_dagster.commands"
DEMO_COMMANDS = {
    "demo": "run against local stand-ins of the synchrotron, then keep the Dagster UI up (make demo)",
    "portal-sim": "serve a simulated synchrotron portal over HTTP",
}


def _not_installed(args: argparse.Namespace) -> int:
    return _fail(f"{args.command}: the demo is not installed: pip install 'assyncy-dagster[demo]'")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="assyncy", description="assyncy-dagster: repatriate Australian Synchrotron data with Dagster."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    check = commands.add_parser("check-config", help="validate config.yml and what it points at")
    _config_argument(check)
    check.set_defaults(func=check_config)

    add = commands.add_parser("add-epn", help="add EPN partitions to the Dagster instance in $DAGSTER_HOME")
    add.add_argument("epns", nargs="+", metavar="EPN")
    _config_argument(add)
    add.set_defaults(func=add_epn)

    audit = commands.add_parser(
        "fixity-audit",
        help="re-hash recorded EPNs at home against their manifests (the fixity_audit job, in this process)",
    )
    audit.add_argument("epns", nargs="*", metavar="EPN", help="EPNs to audit (default: every one in ignore.yml)")
    _config_argument(audit)
    audit.set_defaults(func=fixity_audit)

    added = set()
    for entry in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        entry.load()(commands)
        added.add(entry.name)
    for name, help_text in DEMO_COMMANDS.items():
        if name not in added:
            missing = commands.add_parser(name, help=f"{help_text} (needs assyncy-dagster[demo])", add_help=False)
            missing.set_defaults(func=_not_installed)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.func is _not_installed:  # whatever options it was given: what to install comes first
        return _not_installed(args)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
