"""One substep of an mrjob script on a worker: ``python3 -m reductio.mrjob_task JOB.py --step-num=N --mapper ...``.

mrjob encodes keys with ujson, rapidjson or simplejson when it can import
them, else with the standard library's json, and they write the same key
as different bytes. Keys are partitioned by their bytes, so every worker
must encode alike: this hides the other libraries from the script, which
then runs unchanged as its own ``__main__``, importing the ``mrjob.zip``
of the head's mrjob shipped into its working folder (mrjobs.py) when
there is one. mrjob 0.7.4 imports two modules newer Pythons removed;
``supply_removed_modules`` stands in for them. Standard library only.
"""

import importlib.util
import os
import re
import runpy
import shlex
import shutil
import sys
import types

from reductio.buffering import buffered_stdout

_OTHER_JSON = ("ujson", "rapidjson", "simplejson")


def main() -> None:
    for name in _OTHER_JSON:
        sys.modules[name] = None  # importing it raises ImportError: mrjob falls back to json
    supply_removed_modules()
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    if os.path.isfile("mrjob.zip"):
        sys.path.insert(0, os.path.abspath("mrjob.zip"))
    with buffered_stdout():  # mrjob writes each key and value apart
        runpy.run_path(script, run_name="__main__")


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


if __name__ == "__main__":
    main()
