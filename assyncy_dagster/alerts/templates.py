"""Loading and rendering the e-mail templates, the one way every e-mail is rendered.

Unlike HPC ASSyncy, the HTML part is rendered with autoescaping: a scientist
called ``<script>`` arrives as text, not markup. Nothing from the portal is
ever marked safe. Both environments use ``StrictUndefined``, so a misspelt
variable is an error naming the template file and line, not a blank.

The templates with fixed names (the failure alert, the digest's stuck section)
are shipped in etc/ beside ``epnalert-text.j2`` and ``epnalert-html.j2``: a copy
in ``epnalert-template-folder`` wins, and a folder without one (set up before
these existed) gets the shipped file (`shipped_or_admin`).
"""

from __future__ import annotations

import os
import traceback
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

from ..etc_files import etc_path


class TemplateError(Exception):
    """An e-mail template is missing, does not parse, or fails to render.

    `template` is the file (a path when known), `lineno` the line or None.
    """

    def __init__(self, template: str, problem: str, lineno: int | None = None):
        self.template = template
        self.lineno = lineno
        self.problem = problem
        where = f"{template}, line {lineno}" if lineno else template
        super().__init__(f"{where}: {problem}")


def _environment(folder: Path, *, html: bool) -> jinja2.Environment:
    # autoescape=True rather than select_autoescape: admins name templates *.j2,
    # which extension-based selection would leave unescaped. Sandboxed: a template
    # is data, and must never reach Python (`cycler.__init__.__globals__.os` ...).
    return SandboxedEnvironment(
        loader=jinja2.FileSystemLoader(str(folder)),
        autoescape=html,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )


def _template_line(exc: BaseException, folder: Path) -> tuple[str | None, int | None]:
    """The template file and line an error was raised at, from Jinja's rewritten traceback."""
    root = os.path.realpath(folder)
    found: tuple[str | None, int | None] = (None, None)
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename and os.path.realpath(frame.filename).startswith(root + os.sep):
            found = (frame.filename, frame.lineno)
    return found


def render(folder: Path, name: str, variables: dict[str, Any], *, html: bool, setting: str | None) -> str:
    """`name` in `folder` rendered; `setting` is the config.yml key that names it (None: a fixed name)."""
    folder = Path(folder)
    path = folder / name
    env = _environment(folder, html=html)
    try:
        template = env.get_template(name)
    except jinja2.TemplateNotFound as exc:
        missing = str(path) if exc.name == name else f"{folder / str(exc.name)} (included from {path})"
        check = f"{setting} and epnalert-template-folder" if setting else "epnalert-template-folder"
        raise TemplateError(missing, f"template not found; check {check} in config.yml") from None
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(exc.filename or str(path), f"syntax error: {exc.message}", exc.lineno) from None
    except OSError as exc:
        raise TemplateError(str(path), f"cannot read: {exc.strerror or exc}") from None
    try:
        return template.render(**variables)
    except jinja2.TemplateSyntaxError as exc:  # in an included template
        raise TemplateError(exc.filename or str(path), f"syntax error: {exc.message}", exc.lineno) from None
    except Exception as exc:  # any failure inside an admin's template is a template problem
        filename, lineno = _template_line(exc, folder)
        problem = exc.message if isinstance(exc, jinja2.TemplateError) and exc.message else str(exc)
        if isinstance(exc, SecurityError):
            problem = f"refused by the template sandbox: {problem} (templates may only format the alert's variables)"
        elif isinstance(exc, jinja2.UndefinedError):
            problem = f"{problem} (available variables: {', '.join(sorted(variables))})"
        raise TemplateError(filename or template.filename or str(path), problem, lineno) from None


def shipped_or_admin(name: str, template_folder: Path | None) -> Path:
    """The folder to read the fixed-name template `name` from: the admin's epnalert-template-folder
    when it holds one, else etc/ as shipped."""
    if template_folder is not None and (Path(template_folder) / name).is_file():
        return Path(template_folder)
    return etc_path()


def render_fixed(name: str, template_folder: Path | None, variables: dict[str, Any], *, html: bool) -> str:
    """The fixed-name template `name` rendered, from the admin's folder when it holds one, else etc/."""
    return render(shipped_or_admin(name, template_folder), name, variables, html=html, setting=None)


def names_used(folder: Path, name: str) -> set[str]:
    """The variables a template (and the templates it includes or extends) refers to."""
    env = _environment(folder, html=False)
    seen: set[str] = set()
    loader = env.loader
    assert loader is not None  # _environment always gives a FileSystemLoader on the folder
    used: set[str] = set()
    pending = [name]
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            source = loader.get_source(env, current)[0]
            ast = env.parse(source)
        except (jinja2.TemplateError, OSError):
            continue  # rendering has already said what is wrong with it
        used |= jinja2.meta.find_undeclared_variables(ast)
        pending.extend(t for t in jinja2.meta.find_referenced_templates(ast) if isinstance(t, str))
    return used
