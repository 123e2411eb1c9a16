"""The reductio task library: import these into your fabfile.

    from reductio.tasks import *

Each task runs once on the head and fans out to every worker itself, in
parallel; if any worker fails, the task stops with one message naming each
failed worker and why, and the step's target is published nowhere.
"""

from __future__ import annotations

import functools
import os
import re
import tempfile
import time
from pathlib import Path

from invoke import Exit, task

from reductio import packaging, spread
from reductio.cluster import Cluster, project_folder
from reductio.errors import DatasetError, ReductioError, UserCodeError
from reductio.gather import merge_to_file
from reductio.job import Survey, common_source, digest_of, discard, new_attempt, publish, run_and_publish
from reductio.steps import user_error, code_digest, load_function
from reductio.store import RECORDS, TEXT, check_name
from reductio.trust import install_trust

__all__ = [
    "setup", "distribute", "load", "initialize", "map", "transform", "scatter",
    "sort", "sort_unique", "reduce", "merge", "delete", "status",
]

_FUNCTION = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")
_HELP_FUNCTION = "dotted path of the function, e.g. mymodule.bigrams; it must import on the workers"
_HELP_SOURCE = "name of the dataset to read"
_HELP_TARGET = "name of the dataset to write (replaced if it exists)"
_HELP_FORCE = "redo the step even if its target is up to date"


def _reported(body):
    """Turn a ReductioError into invoke's Exit: the message and exit code 1, no traceback."""

    @functools.wraps(body)
    def run(c, *args, **kwargs):
        try:
            return body(c, *args, **kwargs)
        except ReductioError as err:
            message = f"reductio: {err}"
            if err.details:
                message += "\n" + err.details.rstrip()
            raise Exit(message, code=1) from None

    return run


def _say(text: str) -> None:
    print(f"reductio: {text}", flush=True)


def _up_to_date(c, survey: Survey, facts: dict, target: str, force: bool) -> bool:
    """True (with a one-line notice) if the target was made from the same source, code and settings."""
    if force or (c.config.get("reductio") or {}).get("force"):
        return False
    if not survey.current(facts):
        return False
    source = f" from {facts['source']}" if "source" in facts else ""
    _say(f"{facts['step']}: {target} is up to date{source}; skipped (--force redoes it)")
    return True


def _check_function(path: str) -> str:
    if not isinstance(path, str) or not _FUNCTION.fullmatch(path):
        raise UserCodeError(f"bad function path {path!r}: give package.module.function")
    return path


def _total(results: dict, key: str) -> int:
    return sum(r.get(key, 0) for r in results.values())


def _lines_out(results: dict) -> int:
    return sum(f["lines"] for r in results.values() for f in r["files"].values())


@task
@_reported
def setup(c):
    """Prepare every worker (home, Python environment, reductio, cluster key), then distribute."""
    cluster = Cluster.from_context(c)
    remote = [w for w in cluster.workers if not w.is_local]
    if remote:
        cluster.each("setup", packaging.ensure_venv, remote)
        with tempfile.TemporaryDirectory(prefix="reductio-sdist-") as scratch:
            updated = packaging.deploy(cluster, "reductio", packaging.reductio_sdist(Path(scratch)))
        if updated:
            _say(f"setup: installed reductio on {', '.join(updated)}")
    cluster.each("setup", lambda w: w.step("prepare", {}))
    install_trust(cluster)
    _say(f"setup: {len(cluster)} worker(s) ready: {', '.join(w.name for w in cluster.workers)}")
    distribute(c)


@task
@_reported
def distribute(c):
    """Install your project on every SSH worker, as an sdist built here; skipped when unchanged.

    The project is the nearest folder at or above the fabfile's holding
    setup.py or pyproject.toml. Local workers import the fabfile's folder
    directly instead. Dependencies come from the ``reductio.wheelhouse``
    folder of wheels when configured (README: "Code on the workers").
    """
    cluster = Cluster.from_context(c)
    folder = project_folder(c)
    results = cluster.each("distribute", lambda w: w.step("prepare", {}))
    local = [w for w in cluster.workers if w.is_local]
    if local:
        versions = sorted({results[w.name]["python"] for w in local})
        _say(f"distribute: local workers import {folder} (Python {', '.join(versions)})")
    if len(local) == len(cluster):
        return
    project = packaging.find_project(folder)
    if project is None:
        _say(f"distribute: no setup.py or pyproject.toml at or above {folder}; nothing to install on SSH workers")
        return
    wheelhouse = (c.config.get("reductio") or {}).get("wheelhouse")
    with tempfile.TemporaryDirectory(prefix="reductio-sdist-") as scratch:
        sdist = packaging.build_sdist(project, Path(scratch))
        updated = packaging.deploy(cluster, "project", sdist, Path(os.path.expanduser(wheelhouse)) if wheelhouse else None)
    if updated:
        _say(f"distribute: installed {sdist.name} on {', '.join(updated)}")
    else:
        _say(f"distribute: {sdist.name} unchanged on every SSH worker")


@task(help={"path": "a local file or folder of files (.gz read transparently)", "target": _HELP_TARGET,
            "force": _HELP_FORCE})
@_reported
def load(c, path, target, force=False):
    """Split local text files into line-aligned shards spread evenly over the workers.

    A line with no tab is a key with an empty value when mapped; CRLF line
    ends become LF; invalid UTF-8 stops the load with the file and offset.
    """
    check_name(target)
    files = spread.input_files(path)
    cluster = Cluster.from_context(c)
    size = spread.block_size(files, len(cluster))
    started = time.time()
    listing = digest_of(f"{p.resolve()}\t{p.stat().st_size}\t{p.stat().st_mtime_ns}" for p in files)
    facts = {"step": "load", "path": str(path), "input": listing, "format": TEXT, "partitions": None,
             "workers": len(cluster)}
    if _up_to_date(c, Survey(cluster, "load", target), facts, target, force):
        return

    def feed(spreader):
        for file in files:
            for block in spread.text_blocks(file, size):
                spreader.write(block)

    received = _spread(cluster, target, "load", feed, facts)
    _say(f"load: {path} -> {target}: {_count(received)} lines on {len(cluster)} worker(s) ({time.time() - started:.1f} s)")


@task(help={"function": "dotted path of function(out), run on the head; out.write_pair(k, v), out.write(line)",
            "target": _HELP_TARGET, "force": _HELP_FORCE})
@_reported
def initialize(c, function, target, force=False):
    """Run an input generator on the head and spread what it writes over the workers."""
    check_name(target)
    generate = load_function(_check_function(function))
    cluster = Cluster.from_context(c)
    facts = {"step": "initialize", "function": function, "code": code_digest(function), "format": TEXT,
             "partitions": None, "workers": len(cluster)}
    if _up_to_date(c, Survey(cluster, "initialize", target), facts, target, force):
        return

    def feed(spreader):
        out = spread.SpreadingOutput(function, spreader)
        try:
            generate(out)
        except ReductioError:
            raise
        except Exception as exc:
            raise user_error(f"{function} raised", exc) from None
        out.flush()

    received = _spread(cluster, target, "initialize", feed, facts)
    _say(f"initialize: {function} -> {target}: {_count(received)} lines on {len(cluster)} worker(s)")


def _spread(cluster, target: str, origin: str, feed, facts: dict) -> dict:
    """Open a Spreader, let ``feed`` fill it, then publish the shards as ``target``."""
    attempt = new_attempt()
    spreader = None
    try:
        spreader = spread.Spreader(cluster, attempt, origin)
        try:
            feed(spreader)
        except BaseException:
            spreader.abandon()
            raise
        received = spreader.finish()
        publish(cluster, attempt, target, received, facts, origin)
    except BaseException:
        discard(cluster, attempt)
        raise
    return received


def _count(received: dict) -> int:
    return sum(f["lines"] for files in received.values() for f in files.values())


def _function_step(c, step: str, function: str, source: str, target: str, force: bool) -> None:
    """map, transform and reduce: run the function on every worker, partition its output."""
    _check_function(function)
    check_name(source)
    check_name(target)
    cluster = Cluster.from_context(c)
    started = time.time()
    survey = Survey(cluster, step, target, source, function)
    facts = {"step": step, "function": function, "code": survey.code, "source": source,
             "source_attempt": survey.source["attempt"], "format": TEXT if step == "transform" else RECORDS,
             "partitions": len(cluster)}
    if _up_to_date(c, survey, facts, target, force):
        return
    results = run_and_publish(
        cluster, step,
        lambda w: {"function": function, "source": source, "partitions": len(cluster), "origin": f"w{w.index:05d}"},
        target, facts,
    )
    _say(f"{step}: {function} {source} -> {target}: {_total(results, 'lines_in')} lines in,"
         f" {_lines_out(results)} out ({time.time() - started:.1f} s)")


@task(help={"function": _HELP_FUNCTION + "; called as function(key, value), yields (key, value) pairs",
            "source": _HELP_SOURCE, "target": _HELP_TARGET, "force": _HELP_FORCE})
@_reported
def map(c, function, source, target, force=False):  # noqa: A001 - the product's name for it
    """Call function(key, value) on every record; each yielded pair goes to the partition owning its key."""
    _function_step(c, "map", function, source, target, force)


@task(help={"function": _HELP_FUNCTION + "; called as function(line, out)",
            "source": _HELP_SOURCE, "target": _HELP_TARGET, "force": _HELP_FORCE})
@_reported
def transform(c, function, source, target, force=False):
    """Call function(line, out) on every raw line; out.write_pair(k, v) and out.write(line) add output."""
    _function_step(c, "transform", function, source, target, force)


@task(help={"function": _HELP_FUNCTION + "; called as function(key, values) once per key",
            "source": "name of a sorted dataset (the output of sort)", "target": _HELP_TARGET,
            "force": _HELP_FORCE})
@_reported
def reduce(c, function, source, target, force=False):
    """Call function(key, values) once per key of sorted input, values a lazy iterator."""
    _function_step(c, "reduce", function, source, target, force)


@task(help={"source": "a dataset made by map, transform or reduce", "target": _HELP_TARGET, "force": _HELP_FORCE})
@_reported
def scatter(c, source, target, force=False):
    """Send partition i of source on every worker straight to worker i, as target there."""
    check_name(source)
    check_name(target)
    cluster = Cluster.from_context(c)
    survey = Survey(cluster, "scatter", target, source)
    facts = {"step": "scatter", "source": source, "source_attempt": survey.source["attempt"],
             "format": survey.source["format"], "partitions": len(cluster)}
    if _up_to_date(c, survey, facts, target, force):
        return
    attempt = new_attempt()
    started = time.time()
    try:
        results = cluster.each("scatter", lambda w: w.step(
            "send", {"attempt": attempt, "source": source, "destinations": _destinations(cluster, w),
                     "self": w.index}))
        if common_source(results, source)["attempt"] != facts["source_attempt"]:
            raise DatasetError(f"dataset {source!r} changed while scatter was reading it; run it again")
        expected = {w.name: {} for w in cluster.workers}
        for result in results.values():
            for index, files in result["sent"].items():
                expected[cluster.workers[int(index)].name].update(files)
        relayed = cluster.each("scatter (relay)", lambda w: _relay(cluster, w, source, attempt, results[w.name]["relay"]),
                               [w for w in cluster.workers if results[w.name]["relay"]])
        for files_by_worker in relayed.values():
            for name, files in files_by_worker.items():
                expected[name].update(files)
        publish(cluster, attempt, target, expected, facts, "scatter")
    except BaseException:
        discard(cluster, attempt)
        raise
    moved = sum(f["bytes"] for files in expected.values() for f in files.values())
    _say(f"scatter: {source} -> {target}: {moved} bytes ({time.time() - started:.1f} s)")


def _destinations(cluster, sender) -> list:
    """Where ``sender`` sends each partition: an SSH worker cannot reach a local one, so the head relays."""
    return [
        {"kind": "relay"} if (w.is_local and not sender.is_local) else w.destination()
        for w in cluster.workers
    ]


def _relay(cluster, sender, source: str, attempt: str, relay: dict) -> dict:
    """Carry files from an SSH worker to local workers through the head, streaming."""
    received = {}
    for index, files in relay.items():
        destination = cluster.workers[int(index)]
        for name, expected in files.items():
            incoming = sender.open("read", {"source": source, "name": name}, "r")
            outgoing = destination.open("receive", {"attempt": attempt, "name": name, "expected": expected}, "w")
            try:
                for block in iter(lambda: incoming.read(1 << 20), b""):
                    outgoing.write(block)
            except BaseException:
                incoming.kill()
                outgoing.kill()
                raise
            incoming.finish()
            received.setdefault(destination.name, {}).update(outgoing.finish()["files"])
    return received


def _sort_step(c, source: str, target: str, unique: bool, force: bool) -> None:
    check_name(source)
    check_name(target)
    cluster = Cluster.from_context(c)
    step = "sort_unique" if unique else "sort"
    started = time.time()
    survey = Survey(cluster, step, target, source)
    facts = {"step": step, "source": source, "source_attempt": survey.source["attempt"],
             "format": survey.source["format"], "partitions": survey.source["partitions"]}
    if _up_to_date(c, survey, facts, target, force):
        return
    results = run_and_publish(
        cluster, "sort", lambda w: {"source": source, "unique": unique, "origin": f"w{w.index:05d}"}, target, facts,
    )
    _say(f"{step}: {source} -> {target}: {_lines_out(results)} lines ({time.time() - started:.1f} s)")


@task(help={"source": _HELP_SOURCE, "target": _HELP_TARGET, "force": _HELP_FORCE})
@_reported
def sort(c, source, target, force=False):
    """Group keys: sort each worker's part of source with the worker's Unix sort (LC_ALL=C)."""
    _sort_step(c, source, target, False, force)


@task(help={"source": _HELP_SOURCE, "target": _HELP_TARGET, "force": _HELP_FORCE})
@_reported
def sort_unique(c, source, target, force=False):
    """Like sort, keeping one copy of each distinct line (sort -u)."""
    _sort_step(c, source, target, True, force)


@task(help={"source": _HELP_SOURCE, "path": "local file to write on the head (replaced when complete)"})
@_reported
def merge(c, source, path):
    """Bring source from every worker to the head, merged in sorted order into one local file."""
    check_name(source)
    cluster = Cluster.from_context(c)
    size = merge_to_file(cluster, source, path)
    _say(f"merge: {source} -> {path} ({size} bytes)")


@task(help={"source": "name of the dataset to remove"})
@_reported
def delete(c, source):
    """Remove a dataset on every worker."""
    check_name(source)
    cluster = Cluster.from_context(c)
    results = cluster.each("delete", lambda w: w.step("delete", {"name": source}))
    held = [name for name, r in results.items() if r["deleted"]]
    _say(f"delete: {source} removed from {len(held)} of {len(cluster)} worker(s)")


@task
@_reported
def status(c):
    """List each worker's datasets with their file count, lines and bytes."""
    cluster = Cluster.from_context(c)
    results = cluster.each("status", lambda w: w.step("status", {}))
    rows = [("worker", "dataset", "step", "files", "lines", "bytes")]
    for name, result in results.items():
        for dataset, facts in result["datasets"].items():
            if "error" in facts:
                rows.append((name, dataset, "INCOMPLETE", "-", "-", facts["error"]))
            else:
                rows.append((name, dataset, facts["step"], str(facts["files"]), str(facts["lines"]), str(facts["bytes"])))
    if len(rows) == 1:
        _say("status: no datasets on any worker")
        return
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
