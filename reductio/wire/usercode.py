"""The user's functions as both sides meet them: imported by dotted path, digested, their errors trimmed.

The head imports a function to run it there (initialize) or to check it
(the mrjob runner), a worker to run it in a step (datasteps.py, steps.py);
both take the same code digest, so "up to date" means the same everywhere.
``Output`` is the ``out`` a transform or initialize function writes to. Any
exception the user's code raises becomes a UserCodeError carrying the
user's own frames; reductio's frames are trimmed away.

Both sides: standard library only.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import os
import sys
import traceback
import types
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import reductio
from reductio.errors import UserCodeError
from reductio.wire import standins
from reductio.wire.records import format_line, format_record

# reductio's own frames, trimmed from a user's traceback: the package root, wherever this module sits in it
_OWN_DIR = os.path.dirname(os.path.abspath(reductio.__file__))


def load_function(path: str) -> Callable:
    """Import ``package.module.function``; any failure is a UserCodeError naming the path."""
    module_name, _, attribute = path.rpartition(".")
    if not module_name:
        raise UserCodeError(f"function {path!r} is not a dotted path like 'package.module.function'")
    standins.install()  # a module that also holds the job's tasks imports on a worker without Fabric
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise user_error(f"function {path!r} does not import, raising", exc) from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise UserCodeError(f"function {path!r}: module {module_name!r} has no function {attribute!r}")
    return function


UNKNOWN = "unknown: "  # a code digest that is a reason instead: the step always runs, saying why


def code_digest(paths: Iterable[str]) -> str:
    """A digest of the code that runs when the functions at ``paths`` are called: a change means a stale output.

    It covers each function's own source file and the module it is looked up
    in; what a function wraps (``__wrapped__``, a ``functools.partial``, a
    closure's functions, a callable object's class); and the project's own
    modules those reach through their globals (module_parts). Files are
    named by module and hashed by content, so workers importing the project
    from different folders agree. When it cannot tell (compiled code, code
    with no source file), it is ``UNKNOWN`` and why: see unknown_code.
    """
    parts: set[str] = set()
    try:
        for path in paths:
            parts |= _function_parts(path)
    except _CannotTell as why:
        return UNKNOWN + str(why)
    return hashlib.sha256("\n".join(sorted(parts)).encode("utf-8", "surrogatepass")).hexdigest()[:16]


def unknown_code(code) -> str | None:
    """Why a code digest (of code_digest) could not be taken, or None when it was."""
    return code[len(UNKNOWN):] if isinstance(code, str) and code.startswith(UNKNOWN) else None


class _CannotTell(Exception):
    """Raised while taking a code digest: the code that runs cannot be read."""


def _function_parts(path: str) -> set[str]:
    function = load_function(path)
    roots = [sys.modules.get(path.rpartition(".")[0])]
    parts: set[str] = set()
    for found in _functions(function, path, set()):
        parts.add(_file_part(found.__code__.co_filename, found.__module__, path))
        roots.append(sys.modules.get(getattr(found, "__module__", None) or ""))
    return parts | module_parts([root for root in roots if root is not None], path)


def _functions(thing, path: str, seen: set) -> Iterator:
    """Every Python function that calling ``thing`` may run directly: itself, what it wraps, closes over."""
    if id(thing) in seen:
        return
    seen.add(id(thing))
    wrapped = _attribute(thing, "__wrapped__")
    if wrapped is not None:
        yield from _functions(wrapped, path, seen)
    if isinstance(thing, functools.partial):
        for part in (thing.func, *thing.args, *thing.keywords.values()):
            if callable(part):
                yield from _functions(part, path, seen)
    elif isinstance(thing, types.MethodType):
        yield from _functions(thing.__func__, path, seen)
        yield from _functions(type(thing.__self__), path, seen)
    elif isinstance(thing, types.FunctionType):
        yield thing
        for cell in thing.__closure__ or ():
            try:
                inside = cell.cell_contents
            except ValueError:  # a cell not filled yet
                continue
            if callable(inside):
                yield from _functions(inside, path, seen)
    elif isinstance(thing, type):
        for klass in thing.__mro__:
            if not _standard(klass.__module__):
                for member in vars(klass).values():
                    member = member.__func__ if isinstance(member, (staticmethod, classmethod)) else member
                    if isinstance(member, types.FunctionType):
                        yield from _functions(member, path, seen)
    elif isinstance(thing, types.BuiltinFunctionType):  # a C function, or a C method bound to its object
        bound = _attribute(thing, "__self__")
        owner = _attribute(thing, "__module__") or (
            bound.__name__ if isinstance(bound, types.ModuleType) else type(bound).__module__)
        if not _standard(owner or ""):
            raise _cannot_tell(thing, path)
    elif isinstance(_attribute(type(thing), "__call__"), types.FunctionType):
        yield from _functions(type(thing), path, seen)  # an object whose class has a __call__ in Python
    elif not _standard(type(thing).__module__):  # else Python's own, e.g. operator.itemgetter or lru_cache's wrapper
        raise _cannot_tell(thing, path)


def _cannot_tell(thing, path: str) -> _CannotTell:
    return _CannotTell(f"{path} runs compiled code ({type(thing).__name__} {_attribute(thing, '__qualname__') or ''})"
                       " whose changes reductio cannot see")


def module_parts(roots: list, path: str) -> set[str]:
    """The roots' files, and those of every project module reached from a project module's globals.

    A module is the project's (_in_project) unless it is Python's own,
    reductio's, or installed in a site-packages folder by another
    distribution than a root's: no guess about which of them matter.
    """
    project = _in_project(roots)
    parts, todo, seen = set(), list(roots), set()
    while todo:
        module = todo.pop()
        name = getattr(module, "__name__", None)
        if name is None or name in seen:
            continue
        seen.add(name)
        filename = getattr(module, "__file__", None)
        if not filename or _standard(name) or not (project(module) or any(module is root for root in roots)):
            continue  # another distribution's module, reached from the project's: its own version, not ours
        parts.add(_file_part(filename, name, path))
        if not project(module):
            continue
        for value in list(vars(module).values()):
            if isinstance(value, types.ModuleType):
                todo.append(value)
                continue
            while isinstance(value, functools.partial):
                value = value.func
            owner = _attribute(value, "__module__") if isinstance(value, (types.FunctionType, type)) else None
            if isinstance(owner, str) and owner in sys.modules:
                todo.append(sys.modules[owner])
    return parts


def _in_project(roots: list) -> Callable:
    installed = set()  # the top-level modules of the distributions installing a root, if any is installed
    for root in roots:
        if _installed(root):
            installed |= _distribution_names(root.__name__.partition(".")[0])

    def project(module) -> bool:
        name = module.__name__
        if _standard(name) or name == "reductio" or name.startswith("reductio."):
            return False
        return not _installed(module) or name.partition(".")[0] in installed

    return project


def _installed(module) -> bool:
    """True for a module in a site-packages folder (an SSH worker's copy of the project, or a dependency)."""
    parts = Path(getattr(module, "__file__", None) or "").parts
    return "site-packages" in parts or "dist-packages" in parts


def _distribution_names(top: str) -> set[str]:
    """Every top-level module of the installed distribution that provides ``top`` (just ``top`` if none does)."""
    try:
        provides = _provided()
    except ImportError:  # Python 3.9: no packages_distributions
        return {top}
    owners = provides.get(top, [])
    return {name for name, dists in provides.items() if set(dists) & set(owners)} | {top}


@functools.lru_cache(maxsize=1)
def _provided() -> dict:
    from importlib.metadata import packages_distributions

    return packages_distributions()


def _file_part(filename: str, module: str, path: str) -> str:
    """``module:SHA-256`` of a file of code; Python's own is named, not read."""
    if _standard(module or ""):
        return f"{module}:python"
    try:
        data = Path(filename).read_bytes()
    except OSError:
        raise _CannotTell(f"{path} runs code of {module or '?'} that has no source file to read"
                          f" ({os.path.basename(filename)})") from None
    return f"{module}:{hashlib.sha256(data).hexdigest()}"


def _standard(module: str) -> bool:
    """True for a module of Python's standard library (or its builtins)."""
    top = module.partition(".")[0]
    names = getattr(sys, "stdlib_module_names", None)
    if names is not None:
        return top in names or top in sys.builtin_module_names
    filename = getattr(sys.modules.get(top), "__file__", None)  # Python 3.9: where it lives says
    if not filename:
        return top in sys.builtin_module_names
    filename = os.path.abspath(filename)
    return filename.startswith(_STDLIB + os.sep) and "site-packages" not in filename and "dist-packages" not in filename


_STDLIB = os.path.dirname(os.path.abspath(os.__file__))


def _attribute(thing, name: str):
    """``getattr`` that a user's object cannot break."""
    try:
        return getattr(thing, name, None)
    except Exception:  # noqa: BLE001 - a property of the user's that raises
        return None


class Output:
    """What ``transform`` and ``initialize`` functions write to: pairs or whole lines."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.written = []

    def write_pair(self, key: str, value: str) -> None:
        self.written.append(format_record((key, value), self.name))

    def write(self, text: str) -> None:
        self.written.append(format_line(text, self.name))


def user_error(what: str, exc: BaseException) -> UserCodeError:
    """A UserCodeError for ``exc``, with only the user's frames in its traceback."""
    frames = [
        frame for frame in traceback.extract_tb(exc.__traceback__)
        if not os.path.abspath(frame.filename).startswith(_OWN_DIR + os.sep)
        and "importlib" not in frame.filename
    ]
    exception = "".join(traceback.format_exception_only(type(exc), exc))
    details = ("Traceback (user code):\n" + "".join(traceback.format_list(frames))) if frames else ""
    return UserCodeError(f"{what} {exception.strip().splitlines()[-1]}", details + exception)
