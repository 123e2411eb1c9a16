"""The sides stay apart, read from the source: worker/ and wire/ import only the standard library; wire/ and the
head import nothing of worker/ (a worker fact both sides need lives in wire/)."""

from __future__ import annotations

import ast
import importlib.util
import os
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "reductio"
# reductio's shared public modules, which a worker imports as they are; the package itself is cheap to import
SHARED = {"reductio", "reductio.errors", "reductio.counters", "reductio.reducers"}
SIDES = ("worker", "wire")
# the mrjob task runner runs the job's own mrjob: the head's, shipped beside it as mrjob.zip
ALSO = {"mrjob/task.py": ("mrjob",)}
_STDLIB = os.path.dirname(os.path.abspath(os.__file__))


def worker_side() -> list:
    """Every module a worker runs: worker/, wire/, and the mrjob task runner with what it imports."""
    found = [path for side in SIDES for path in sorted((PACKAGE / side).rglob("*.py"))]
    return found + [path for path in (PACKAGE / "mrjob" / "__init__.py", PACKAGE / "mrjob" / "task.py",
                                      PACKAGE / "mrjob" / "modules.py", PACKAGE / "gate.py",
                                      PACKAGE / "mrjob_task.py") if path.exists()]


def imports(path: Path):
    """(line, dotted name) of every import in ``path``, lazy ones inside functions too."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module != "__future__":
            if node.module == "reductio":  # from reductio import errors: each name is a module, or the package's
                for alias in node.names:
                    yield node.lineno, f"reductio.{alias.name}" if (PACKAGE / f"{alias.name}.py").exists() or (
                        PACKAGE / alias.name).is_dir() else "reductio"
            else:
                yield node.lineno, node.module


def standard(name: str) -> bool:
    """True for a module of Python's standard library (or its builtins)."""
    top = name.partition(".")[0]
    names = getattr(sys, "stdlib_module_names", None)
    if names is not None:
        return top in names or top in sys.builtin_module_names
    if top in sys.builtin_module_names:  # Python 3.9: where it lives says
        return True
    spec = importlib.util.find_spec(top)
    origin = os.path.abspath(spec.origin) if spec is not None and spec.origin not in (None, "frozen") else ""
    return origin.startswith(_STDLIB + os.sep) and "site-packages" not in origin and "dist-packages" not in origin


def allowed(name: str) -> bool:
    if not name.startswith("reductio"):
        return standard(name)
    if name in SHARED or any(name == f"reductio.{side}" or name.startswith(f"reductio.{side}.") for side in SIDES):
        return True
    return name in ("reductio.mrjob.task", "reductio.mrjob.modules")  # the task runner's own package, not the head's


@pytest.mark.parametrize("path", worker_side(), ids=lambda path: str(path.relative_to(PACKAGE.parent)))
def test_a_worker_side_module_imports_only_the_standard_library_its_side_and_the_shared_modules(path):
    also = ALSO.get(path.relative_to(PACKAGE).as_posix(), ())
    wrong = [f"{path.relative_to(PACKAGE.parent)} line {line} imports {name}"
             for line, name in imports(path) if not allowed(name) and name.partition(".")[0] not in also]
    assert not wrong, "; ".join(wrong) + " (README \"Developing\": worker/ and wire/ stay on the standard library)"


def test_the_worker_side_is_found():
    sides = {path.relative_to(PACKAGE).parts[0] for path in worker_side()}
    assert {"worker", "wire"} <= sides and (PACKAGE / "worker" / "__main__.py").exists()


def head_side() -> list:
    """Every module the head runs that is not also a worker's: head/, the public face, the mrjob runner."""
    return sorted((PACKAGE / "head").rglob("*.py")) + [
        PACKAGE / name for name in ("tasks.py", "cli.py", "__main__.py", "mrjob/runner.py")]


@pytest.mark.parametrize("path", head_side() + sorted((PACKAGE / "wire").rglob("*.py")),
                         ids=lambda path: str(path.relative_to(PACKAGE.parent)))
def test_the_head_and_wire_reach_into_no_worker_module(path):
    wrong = [f"{path.relative_to(PACKAGE.parent)} line {line} imports {name}" for line, name in imports(path)
             if name == "reductio.worker" or name.startswith("reductio.worker.")]
    assert not wrong, "; ".join(wrong) + " (a fact both sides need lives in wire/, README \"Developing\")"
