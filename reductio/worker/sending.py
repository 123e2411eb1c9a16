"""A dataset sent whole to the head: ``cat`` for merge and an mrjob job's output, ``read`` for the relay.

``cat`` writes the worker's part in sorted order and says what the head
must have received: the bytes its marker counts, and a SHA-256. A part
that is one sorted file is sent as it is, so that SHA-256 is the marker's
own; a part that needs ``sort -m`` (or a whole sort) is first checked file
by file against the marker, and the SHA-256 is that of the merged stream.
Either way a part damaged on the worker's disk or on the way is refused,
and merge writes nothing. Standard library only.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys

from reductio.errors import DatasetError, sort_failure
from reductio.wire.datasets import total
from reductio.wire.sorting import sort_argv, sort_env
from reductio.worker.control import source_facts
from reductio.worker.store import Home, check_name, scan

_CHUNK = 1 << 20


def step_cat(params: dict) -> dict:
    """Write a dataset to stdout in sorted order: merge's worker half."""
    home = Home(params["home"])
    marker = home.marker(check_name(params["source"]))
    files = home.files(params["source"], marker)
    facts = {"source": source_facts(marker), "bytes": total(marker["files"].values(), "bytes")}
    out = sys.stdout.buffer
    out.flush()
    if len(files) == 1 and marker["files"][files[0].name]["sorted"]:
        with open(files[0], "rb") as data:
            for block in iter(lambda: data.read(_CHUNK), b""):
                out.write(block)
        out.flush()
        return dict(facts, sha256=marker["files"][files[0].name]["sha256"])
    for path in files:  # sort reads them itself: check them before it does
        if scan(path)[1] != marker["files"][path.name]["sha256"]:
            raise DatasetError(f"{params['source']}/{path.name} does not match its marker's SHA-256;"
                               " the dataset is damaged: make it again")
    folder = home.attempt_dir(params["attempt"])
    already_sorted = all(entry["sorted"] for entry in marker["files"].values())
    try:
        return dict(facts, sha256=_sorted_to(out, sort_argv(files, folder, merge_only=already_sorted), folder,
                                             facts["bytes"], params["home"]))
    finally:
        home.discard(params["attempt"])


def _sorted_to(out, argv: list, folder, needed: int, home: str) -> str:
    """Run sort into ``out``, through a SHA-256 of what it wrote, its temporary files in ``folder``; its stdin is
    not ours (the head's beats)."""
    digest = hashlib.sha256()
    sort = subprocess.Popen(argv, env=sort_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        for block in iter(lambda: sort.stdout.read(_CHUNK), b""):
            digest.update(block)
            out.write(block)
        out.flush()
        error = sort.stderr.read()
        sort.wait()
    except BaseException:
        sort.kill()
        sort.wait()
        raise
    if sort.returncode != 0:
        raise sort_failure(sort.returncode, error, folder, needed, home)
    return digest.hexdigest()


def step_read(params: dict) -> dict:
    """Write one data file of a dataset to stdout: the head relays it to a worker we cannot reach."""
    home = Home(params["home"])
    marker, files = home.version(check_name(params["source"]), params.get("source_attempt"))  # the senders' version
    (path,) = [p for p in files if p.name == params["name"]] or [None]
    if path is None:
        raise DatasetError(f"dataset {params['source']!r} has no file {params['name']!r}")
    with open(path, "rb") as data:
        for block in iter(lambda: data.read(_CHUNK), b""):
            sys.stdout.buffer.write(block)
    sys.stdout.buffer.flush()
    return {"source": source_facts(marker)}
