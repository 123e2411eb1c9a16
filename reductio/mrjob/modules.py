"""What mrjob 0.7.4 imports that newer Pythons removed, stood in for on the head and the workers alike.

``pipes`` (gone in Python 3.13) and ``distutils`` (gone in 3.12): the
head's runner (mrjobs.py) imports mrjob, and so does every task on a
worker (mrjob_task.py). Standard library only.
"""

import importlib.util
import re
import shlex
import shutil
import sys
import types


def supply_removed_modules() -> None:
    """What mrjob 0.7.4 uses of ``pipes`` (gone in Python 3.13) and ``distutils`` (gone in 3.12), where they are
    gone and neither standard-pipes nor setuptools brings them back: ``pipes.quote``,
    ``distutils.spawn.find_executable`` and ``distutils.version.LooseVersion``."""
    if importlib.util.find_spec("pipes") is None:  # found, not imported: importing it here would warn on stderr
        _module("pipes", quote=shlex.quote)
    if importlib.util.find_spec("distutils") is None:
        distutils = _module("distutils")
        distutils.spawn = _module("distutils.spawn", find_executable=shutil.which)
        distutils.version = _module("distutils.version", LooseVersion=LooseVersion)


def _module(name: str, **names) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(names)
    sys.modules[name] = module
    return module


class LooseVersion:
    """distutils' loose version: numbers compare as numbers, other runs of letters as text."""

    _COMPONENT = re.compile(r"(\d+|[a-z]+|\.)")

    def __init__(self, vstring: str = None) -> None:
        if vstring:
            self.parse(vstring)

    def parse(self, vstring: str) -> None:
        self.vstring = vstring
        parts = [part for part in self._COMPONENT.split(vstring) if part and part != "."]
        self.version = [int(part) if part.isdigit() else part for part in parts]

    def __str__(self) -> str:
        return self.vstring

    def __repr__(self) -> str:
        return f"LooseVersion({str(self)!r})"

    def _other(self, other):
        return (LooseVersion(other) if isinstance(other, str) else other).version

    def __eq__(self, other) -> bool:
        return self.version == self._other(other)

    def __lt__(self, other) -> bool:
        return self.version < self._other(other)

    def __le__(self, other) -> bool:
        return self.version <= self._other(other)

    def __gt__(self, other) -> bool:
        return self.version > self._other(other)

    def __ge__(self, other) -> bool:
        return self.version >= self._other(other)
