"""A dataset as both sides name it: its name, its formats, its shards' file names and its markers' totals.

The head checks a name before any worker is touched (tasks.py,
headsteps.py) and names load's shards (spread.py); a worker's home keeps
datasets under those names (store.py). Both sides: standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from reductio.errors import DatasetError

# A marker's "format": TEXT lines come from files or out.write and may lack a
# tab (the whole line is then the key); RECORDS lines were all written as pairs;
# FILES are whole input files as they were (``load --whole``), read only by a map command.
TEXT, RECORDS, FILES = "text", "records", "files"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
_SHARD_FILE = "s{:05d}.{}"  # a worker's piece of load's input file number N, or initialize's lines (N = 0)


def check_name(name: str) -> str:
    """Refuse a dataset name that could leave its folder or need quoting."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise DatasetError(
            f"bad dataset name {name!r}: use 1-100 ASCII letters, digits, '_', '.' and '-',"
            " not starting with '.' or '-', and no '..'"
        )
    return name


def shard_name(index: int, origin: str) -> str:
    """The file name of a worker's shard of input ``index`` (load: one per input file it got lines of)."""
    return _SHARD_FILE.format(index, origin)


def total(files: Iterable[dict], fact: str) -> int:
    return sum(entry[fact] for entry in files)
