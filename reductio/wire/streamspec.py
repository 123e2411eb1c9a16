"""A streaming step as its user writes it: ``| COMMAND``, ``NAME=VALUE`` settings, the names of shipped files.

The head checks them before anything runs (headsteps.py, shipping.py);
a worker reads the same rules when it builds the command (streaming.py).
Both sides: standard library only.
"""

from __future__ import annotations

import re

from reductio.errors import UserCodeError

PREFIX = "|"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,99}")


def command_of(spec) -> str | None:
    """The command that ``spec`` names (``"| COMMAND"``), or None when it is a function's dotted path."""
    if isinstance(spec, str) and spec.startswith(PREFIX):
        return spec[len(PREFIX):].strip()
    return None


def check_env(pairs) -> dict[str, str]:
    """``["NAME=VALUE", ...]`` as a dict, refusing what is not a variable assignment."""
    env = {}
    for pair in pairs or ():
        name, equals, value = str(pair).partition("=")
        if not equals or not _ENV_NAME.fullmatch(name):
            raise UserCodeError(f"bad environment setting {pair!r}: write NAME=VALUE")
        env[name] = value
    return env


def check_shipped_name(name: str) -> str:
    """Refuse a shipped file's name that could leave the command's working folder (a file of a dataset has
    rules of its own: layout.check_file_name)."""
    if not _FILE_NAME.fullmatch(name) or ".." in name:
        raise UserCodeError(f"bad name for a shipped file {name!r}: use letters, digits, '_', '.', '+' and '-'")
    return name
