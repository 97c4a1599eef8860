"""Layers one way (STYLE.md, "One home for every rule"): every module of assyncy_dagster sits on one
floor, and an import never climbs a floor. Read from the sources with `ast` (nothing is imported,
so an import inside a function counts as much as one at the top).

A new module fails `test_every_module_is_on_a_floor` until it is placed in FLOORS below; the
README's "Layers" section lists the same floors, and `test_the_readme_lists_the_floors` keeps them equal.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

from tests.support.helpers import REPO

PACKAGE = REPO / "assyncy_dagster"

# Lowest first. A module may import its own floor and the floors below it, never one above.
FLOORS: dict[str, tuple[str, ...]] = {
    # Plain types and rules: no I/O, no Dagster (tests in microseconds).
    "domain": ("", "domain", "outcomes", "epn", "names", "escaping", "run_configs", "planning", "report"),
    # The outside world and the files: config.yml, etc/, logs, state files, the portal, rsync, mail.
    "io": (
        "config",
        "etc_files",
        "logs",
        "statefiles",
        "state",
        "portal",
        "portal.errors",
        "portal.answers",
        "portal.redaction",
        "portal.watchdog",
        "portal.client",
        "transfer",
        "transfer.errors",
        "transfer.endpoint",
        "transfer.commands",
        "transfer.parsing",
        "transfer.process",
        "transfer.stepwatch",
        "transfer.manifests",
        "transfer.homewalk",
        "transfer.verification",
        "transfer.bag",
        "transfer.streams",
        "transfer.client",
        "transfer.connection",
        "mail",
        "alerts",
        "alerts.templates",
        "alerts.tables",
        "alerts.stuck_section",
        "alerts.unknown_epn",
        "alerts.failure",
        "alerts.checking",
        "report_files",
        "fixity",
    ),
    # What the instance and the state files record, what the portal and the host last said, and the
    # e-mails made of them (the digest, the unknown-EPN alert).
    "records": (
        "run_records",
        "claims",
        "errors_of_runs",
        "due",
        "refresh_failures",
        "facts",
        "canary",
        "epnalert",
    ),
    # Dagster's definitions and what only they use.
    "wiring": (
        "partitions",
        "resources",
        "resources.settings",
        "resources.portal",
        "resources.ssh_source",
        "resources.smtp",
        "assets",
        "assets.visits",
        "assets.bring_home",
        "assets.repatriation",
        "assets.epn_data",
        "assets.fixity",
        "assets.report",
        "sensors",
        "sensors.epn_sensor",
        "sensors.failure_alerts",
        "sensors.report_refresh",
        "tick",
        "jobs",
        "definitions",
    ),
    # The commands: what a person or a cron line runs.
    "commands": ("cycle", "worker", "cli"),
}


def _floor_of() -> dict[str, int]:
    """Module -> floor number, for every module in the package (`pkg.*` would place each module of pkg/)."""
    placed = {module: n for n, modules in enumerate(FLOORS.values()) for module in modules}
    for module in _modules():
        for pattern, n in list(placed.items()):
            if pattern.endswith(".*") and module.startswith(pattern[:-1]):
                placed.setdefault(module, n)
    return placed


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.relative_to(PACKAGE).parts[0] != "etc"
    }


def _imported(module: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that `module` imports, at the top or inside a function."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    package = [p for p in package if p]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                source = ".".join(["assyncy_dagster", *base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            # `from . import canary` imports the module canary; `from .portal import Visit`, portal.
            names = [f"{source}.{alias.name}" for alias in node.names] + [source]
        else:
            continue
        for name in names:
            if name != "assyncy_dagster" and not name.startswith("assyncy_dagster."):
                continue
            relative = name.removeprefix("assyncy_dagster").lstrip(".")
            # The longest known module the name starts with (`transfer.manifests.files_of` -> transfer.manifests).
            while relative not in known and "." in relative:
                relative = relative.rsplit(".", 1)[0]
            if relative in known and relative != module:
                found.add(relative)
    # `from . import canary` also names the package itself (""), whose __init__ is empty.
    found.discard("")
    return found


def _upward_arrows() -> list[str]:
    floor_of = _floor_of()
    floors = list(FLOORS)
    modules = _modules()
    arrows = []
    for module, path in modules.items():
        for target in sorted(_imported(module, path, set(modules))):
            if module not in floor_of or target not in floor_of:
                continue  # test_every_module_is_on_a_floor names it
            if floor_of[target] > floor_of[module]:
                arrows.append(f"{module} ({floors[floor_of[module]]}) imports {target} ({floors[floor_of[target]]})")
    return arrows


def test_every_module_is_on_a_floor():
    floor_of = _floor_of()
    modules = set(_modules())
    unplaced = sorted(modules - set(floor_of))
    assert not unplaced, f"place each new module on a floor in FLOORS: {', '.join(unplaced)}"
    named = {m for m in floor_of if not m.endswith(".*")}
    gone = sorted(named - modules)
    assert not gone, f"FLOORS names modules that no longer exist: {', '.join(gone)}"


def test_no_import_climbs_a_floor():
    arrows = _upward_arrows()
    assert not arrows, "imports that climb a floor:\n" + "\n".join(arrows)


def test_the_product_imports_nothing_of_the_stand_ins():
    """The stand-ins and the demo are another distribution (assyncy-dagster-demo): the product's wheel
    does not carry them, so an import of them would fail where the product is installed alone."""
    found = []
    for module, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            found += [f"{module} imports {name}" for name in names if name.split(".")[0] == "assyncy_dagster_demo"]
    assert not found, "\n".join(found)


def test_the_domain_floor_imports_only_the_standard_library():
    """No Dagster, no HTTP, no YAML: a rule of the domain floor tests in microseconds."""
    modules = _modules()
    outside = []
    for module in FLOORS["domain"]:
        for node in ast.walk(ast.parse(modules[module].read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            top = {name.split(".")[0] for name in names} - {"assyncy_dagster", "__future__"}
            outside += [f"{module} imports {name}" for name in sorted(top - sys.stdlib_module_names)]
    assert not outside, "\n".join(outside)


def test_the_walk_sees_imports_inside_functions_and_relative_ones():
    modules = _modules()
    known = set(modules)
    cli = _imported("cli", modules["cli"], known)
    assert {"alerts.checking", "definitions", "config"} <= cli  # the first two only inside functions
    assert "domain" in _imported("assets.visits", modules["assets.visits"], known)  # `from ..domain import`


def test_the_readme_lists_the_floors():
    """README.md's "Layers" section: one line per floor, `floor: module, module, ...`, lowest first."""
    text = (REPO / "README.md").read_text()
    section = text.split("### Layers", 1)[1].split("\n#", 1)[0]
    listed = {
        m.group(1): tuple(name.strip("` ") for name in m.group(2).split(","))
        for m in re.finditer(r"^- \*\*([\w-]+)\*\*[^:]*: (.+)$", section, re.M)
    }
    expected = {floor: tuple(m or "__init__" for m in modules) for floor, modules in FLOORS.items()}
    assert list(listed) == list(FLOORS)
    assert listed == expected


def _readme_map() -> set[str]:
    """The .py files README.md's "How it fits together" map names, as paths from the repository's root."""
    text = (REPO / "README.md").read_text()
    block = text.split("## How it fits together", 1)[1].split("```", 2)[1]
    named, folders = set(), []
    for line in block.splitlines():
        indent = len(line) - len(line.lstrip(" "))
        name = line.strip().split(" ", 1)[0]
        if indent % 2 or not name.endswith(("/", ".py")):
            continue  # a wrapped description, or a file that is not Python
        folders = folders[: indent // 2]
        if name.endswith("/"):
            folders.append(name.rstrip("/"))
        else:
            named.add("/".join([*folders, name]))
    return named


def test_the_readmes_map_names_every_module_and_only_those():
    """Each module of the product and of the stand-ins' distribution has its line in the map (dunder
    files may go unnamed), and the map names no file that is gone."""
    roots = [PACKAGE, REPO / "assyncy-dagster-demo" / "assyncy_dagster_demo"]
    modules = {
        str(path.relative_to(REPO))
        for root in roots
        for path in root.rglob("*.py")
        if "etc" not in path.relative_to(root).parts and "__pycache__" not in path.parts
    }
    named = _readme_map()
    assert sorted(m for m in modules - named if not Path(m).name.startswith("__")) == []
    assert sorted(named - modules) == []


# Unit test files about something other than one module, each with what it is about.
UNIT_TOPICS = {
    "layers": "the package's import graph and the README's map",
    "packaging": "what the product ships and reads (etc/, the demo's subcommands)",
    "example_configs": "the shipped etc/*.yaml against Dagster's own schemas",
    "systemd": "the shipped systemd units",
}


def test_unit_test_files_are_named_after_the_module_they_test():
    """tests/unit/test_<module>.py, with a package's dots as underscores (test_transfer_bag.py tests
    transfer/bag.py), so that a module's tests are found by its name; UNIT_TOPICS names the others."""
    roots = [PACKAGE, REPO / "assyncy-dagster-demo" / "assyncy_dagster_demo"]
    modules = set()
    for root in roots:
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            if parts and parts[0] != "etc":
                modules.add("_".join(parts))
    names = {path.stem.removeprefix("test_") for path in (REPO / "tests" / "unit").glob("test_*.py")}
    assert sorted(names - modules - set(UNIT_TOPICS)) == []
    assert sorted(set(UNIT_TOPICS) - names) == []  # a topic whose file is gone
