"""Names that become folder names in the lake or identifiers in the catalog.

Pipeline, source, stage and release names end up in paths (``raw/<source>/...``,
``releases/<name>/<version>``) and in SQL view names (``ann_<stage>``). A name such as ``..``,
``a/b`` or one holding a control character would break the lake layout or escape it, so every
name is checked by one rule, here, wherever it enters: the YAML, the command line, a release
reference.

The rule: 1 to ``MAX_NAME_LEN`` characters of ASCII letters, digits, ``_``, ``-`` and ``.``; not
starting with a dot or a dash; no ``..``. (Stage names are stricter still: they are also the
``stage`` in ``stage.column`` of a selection, so they are identifiers.)
"""
from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

MAX_NAME_LEN = 64
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_STAGE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def name_problem(name: object, what: str = "name", identifier: bool = False) -> str | None:
    """Why ``name`` cannot name a pipeline/source/release (or, with identifier, a stage); None if it can."""
    if not isinstance(name, str):
        return f"{what} must be a string, not {type(name).__name__}"
    shown = repr(name) if len(name) <= 80 else repr(name[:80]) + "..."
    if not name:
        return f"{what} is empty"
    if len(name) > MAX_NAME_LEN:
        return f"{what} {shown} is {len(name)} characters long; at most {MAX_NAME_LEN} are allowed"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return f"{what} {shown} holds a control character"
    if "/" in name or "\\" in name:
        return f"{what} {shown} holds a path separator ('/' or '\\'); it becomes a folder name in the lake"
    if name.startswith("."):
        return f"{what} {shown} starts with a dot (hidden and temporary files in the lake do)"
    if ".." in name:
        return f"{what} {shown} holds '..'"
    if identifier:
        if not _STAGE.fullmatch(name):
            return (f"{what} {shown} must be an identifier (letters, digits and '_', not starting with a digit): "
                    "it is the `stage` in `stage.column`")
    elif not _NAME.fullmatch(name):
        return f"{what} {shown} may hold only letters, digits, '_', '-' and '.' (and must not start with '-')"
    return None


def check_name(name: str, what: str = "name", identifier: bool = False) -> str:
    """``name`` if it is safe (see the module docstring), else ValueError saying why."""
    problem = name_problem(name, what, identifier)
    if problem:
        raise ValueError(problem)
    return name


def _safe(v: str) -> str:
    return check_name(v)


def _ident(v: str) -> str:
    return check_name(v, identifier=True)


# pydantic field types: SafeName for pipeline/source/release names, StageName for stages.
SafeName = Annotated[str, AfterValidator(_safe)]
StageName = Annotated[str, AfterValidator(_ident)]
