"""Stand-ins, on a worker, for the head's modules that a task module imports: fabric, invoke, reductio.tasks.

README's job keeps its tasks beside its functions in one module (``from fabric import task``, ``from
reductio.tasks import *``), as ``fab -f mymodule`` users write it. A worker imports that module for its
functions only, and its environment has neither Fabric nor invoke: they are the head's, with paramiko and
cryptography, and a worker needs no package index to get them. Where they are missing, ``install`` lets
such a module import: ``task`` (``@task``, ``@task(help=...)``) leaves the function as it is, and any other
name from those modules is a stand-in that says whose it is when called. Where Fabric and invoke are
installed (the head, local workers) nothing changes.

Worker side: standard library only.
"""

from __future__ import annotations

import ast
import importlib.abc
import importlib.util
import os
import sys

import reductio
from reductio.errors import UserCodeError

_HEADS = ("fabric", "invoke")  # the head's libraries a task module imports
_TASKS = "reductio.tasks"


def install() -> None:
    """Serve stand-ins for whichever of Fabric and invoke this environment lacks (and then for reductio.tasks,
    which needs both); nothing when it has them."""
    if any(isinstance(finder, _StandIns) for finder in sys.meta_path):
        return
    missing = {name for name in _HEADS if _absent(name)}
    if missing:
        sys.meta_path.insert(0, _StandIns(missing))


def _absent(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is None
    except (ImportError, ValueError):
        return True


def task(*args, **kwargs):
    """``@task`` and ``@task(...)`` on a worker: the function itself, which a worker never runs as a task."""
    if len(args) == 1 and callable(args[0]) and not kwargs:
        return args[0]
    return lambda body: body


class HeadOnly:
    """A name from the head's modules, on a worker: harmless to import, an error naming it when called."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args, **kwargs):
        raise UserCodeError(f"{self.name} belongs on the head: this worker runs only your functions, and has no"
                            " Fabric or invoke (README \"Code on the workers\")")

    def __repr__(self) -> str:
        return f"<{self.name}, the head's, not on this worker>"


class _StandIns(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, missing: set) -> None:
        self.missing = missing

    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in self.missing or name == _TASKS:
            return importlib.util.spec_from_loader(name, self, is_package=top in self.missing)
        return None

    def create_module(self, spec):
        return None  # a plain module

    def exec_module(self, module) -> None:
        name = module.__name__
        names = _task_names() if name == _TASKS else ["task"]
        for attribute in names:
            setattr(module, attribute, task if attribute == "task" else HeadOnly(f"{name}.{attribute}"))
        module.__all__ = names

        def other(attribute: str):  # from fabric import Connection; never a dunder that tools probe for
            if attribute.startswith("__"):
                raise AttributeError(attribute)
            return HeadOnly(f"{name}.{attribute}")

        module.__getattr__ = other


def _task_names() -> list:
    """reductio.tasks' ``__all__``, read from its source: the one list of the task library's names."""
    source = os.path.join(os.path.dirname(os.path.abspath(reductio.__file__)), "tasks.py")  # the package root's
    with open(source, encoding="utf-8") as text:
        tree = ast.parse(text.read(), source)
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return list(ast.literal_eval(node.value))
    return []
