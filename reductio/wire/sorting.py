"""The argv for the worker's own Unix ``sort``: the one place its flags live.

``LC_ALL=C`` makes sort compare bytes, which for UTF-8 is code point order:
the same order on every worker, whatever its locale. Lines are ordered by
their key (all before the first tab), then by the whole line: so all lines
of one key sit together whatever bytes it holds. Whole lines alone would
not do: ``a<TAB>1`` sorts after ``a\x01<TAB>z`` (TAB is byte 9), splitting
key ``a`` around key ``a\x01``. sort_key is that order in Python, the one
in which reduce, merge and shares check their input.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

SORT_BUFFER = "256M"
MERGE_BUFFER = "32M"  # merging sorted inputs streams them: a big buffer buys nothing
SIZE = re.compile(r"\d+[%bKMGT]?")
KEY_FIRST = ["-t", "\t", "-k1,1", "-k1"]  # the key (field 1), then the whole line (field 1 to the end)


def sort_key(line: str) -> tuple[str, str]:
    """The order of sort_argv for a line without its LF: its key, then the whole line."""
    return line.partition("\t")[0], line


def sort_env() -> dict[str, str]:
    """The environment for sort: byte order, whatever the worker's locale."""
    env = dict(os.environ)
    env["LC_ALL"] = "C"
    return env


def sort_argv(
    inputs: Sequence[Path],
    temp_dir: Path,
    output: Path = None,
    unique: bool = False,
    merge_only: bool = False,
    buffer: str = None,
    parallel: int = None,
) -> list[str]:
    """argv to sort ``inputs`` (or merge already sorted ones) into ``output`` or stdout.

    Temp files go to ``temp_dir`` inside the worker's home, never /tmp, so a
    big sort cannot fill a small system disk; ``-S`` bounds the memory used
    (``buffer``, default SORT_BUFFER); ``parallel`` sets sort's threads.
    """
    buffer = buffer or (MERGE_BUFFER if merge_only else SORT_BUFFER)
    if not SIZE.fullmatch(str(buffer)):
        raise ValueError(f"sort buffer {buffer!r} is not a size like 256M or 10%")
    argv = ["sort", "-S", str(buffer), "-T", str(temp_dir), *KEY_FIRST]  # -m and -u compare by them too
    if parallel:
        argv.append(f"--parallel={int(parallel)}")
    if merge_only:
        argv.append("-m")
    if unique:
        argv.append("-u")
    if output is not None:
        argv += ["-o", str(output)]
    return argv + ["--"] + [str(path) for path in inputs]
