"""The reductio task library: import these into your fabfile.

    from reductio.tasks import *

Each task runs once on the head and fans out to every worker itself, in
parallel; if any worker fails, the task stops with one message naming each
failed worker and why, and the step's target is published nowhere.
"""

from __future__ import annotations

import functools
import shlex
import tempfile
import time
from pathlib import Path

from invoke import Exit, task

from reductio.errors import ReductioError, UserCodeError, printable
from reductio.head import packaging, shellcost, spread
from reductio.head import steps as headsteps
from reductio.head.cluster import Cluster, project_folder
from reductio.head.config import settings
from reductio.head.job import shape
from reductio.head.report import read_log, render, write_report
from reductio.head.steps import dry, say
from reductio.head.trust import install_trust, revoke_trust
from reductio.wire import streamspec
from reductio.wire.datasets import check_name

__all__ = [
    "setup", "distribute", "load", "initialize", "map", "transform", "scatter",
    "sort", "sort_unique", "reduce", "merge", "delete", "status", "report", "mrjob", "revoke",
]

_HELP_FUNCTION = "dotted path of the function, e.g. mymodule.bigrams; it must import on the workers"
_HELP_SOURCE = "name of the dataset to read"
_HELP_TARGET = "name of the dataset to write (replaced if it exists)"
_HELP_FORCE = "redo the step even if its target is up to date"
_HELP_FILES = "a local file the command needs in its working folder (repeatable)"
_HELP_ARCHIVES = ("a local tar or zip file the command needs unpacked in its working folder, as a folder named"
                  " after the file (PATH#NAME to name it; repeatable)")
_HELP_ENV = "NAME=VALUE set in the command's environment (repeatable)"


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


@task
@_reported
def setup(c):
    """Prepare every worker (home, Python environment, reductio, cluster key), then distribute."""
    cluster = Cluster.from_context(c)
    if dry(c, cluster, "prepare", lambda w: {}):
        return
    remote = [w for w in cluster.workers if not w.is_local]
    if remote:
        for name, replaced in cluster.each("setup", packaging.ensure_venv, remote).items():
            if replaced:
                say(f"setup: {name}: {replaced}")
        with tempfile.TemporaryDirectory(prefix="reductio-sdist-") as scratch:
            updated = packaging.deploy(cluster, "reductio", packaging.reductio_sdist(Path(scratch)))
        if updated:
            say(f"setup: installed reductio on {', '.join(updated)}")
    cluster.each("setup", lambda w: w.step("prepare", {}))
    install_trust(cluster)
    if remote:
        limit = settings(c.config).get("slow_command", shellcost.SLOW_COMMAND)
        for line in shellcost.advice(shellcost.measure(cluster, remote), len(cluster), limit):
            say(f"setup: {line}")
    say(f"setup: {len(cluster)} worker(s) ready: {', '.join(w.name for w in cluster.workers)}")
    distribute(c)


@task(help={"everywhere": "remove every cluster key's line on the workers' accounts, whatever homes it serves"})
@_reported
def revoke(c, everywhere=False):
    """Revoke the cluster key for this cluster's homes on its SSH workers: scatter stops until setup runs again."""
    removed = revoke_trust(Cluster.from_context(c), everywhere)
    say(f"revoke: {sum(removed.values())} cluster key line(s) removed or cut on {len(removed)} worker(s)")


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
    if dry(c, cluster, "prepare", lambda w: {}):
        return
    folder = project_folder(c)
    results = cluster.each("distribute", lambda w: w.step("prepare", {}))
    local = [w for w in cluster.workers if w.is_local]
    if local:
        versions = sorted({results[w.name]["python"] for w in local})
        say(f"distribute: local workers import {folder} (Python {', '.join(versions)})")
    if len(local) == len(cluster):
        return
    project = packaging.find_project(folder)
    if project is None:
        say(f"distribute: no setup.py or pyproject.toml at or above {folder}; nothing to install on SSH workers")
        return
    wheelhouse = settings(c.config).get("wheelhouse")
    with tempfile.TemporaryDirectory(prefix="reductio-sdist-") as scratch:
        sdist = packaging.build_sdist(project, Path(scratch))
        updated = packaging.deploy(cluster, "project", sdist, Path(wheelhouse) if wheelhouse else None)
    if updated:
        say(f"distribute: installed {sdist.name} on {', '.join(updated)}")
    else:
        say(f"distribute: {sdist.name} unchanged on every SSH worker")


@task(help={"path": "a local file or folder of files (.gz read transparently)", "target": _HELP_TARGET,
            "force": _HELP_FORCE,
            "whole": "send each file whole and unchanged to one worker, for a map command that reads the files"
                     " it is given (README \"Streaming steps\")"})
@_reported
def load(c, path, target, force=False, whole=False):
    """Split local text files into line-aligned shards spread evenly over the workers.

    A line with no tab is a key with an empty value when mapped; CRLF line
    ends become LF; invalid UTF-8 stops the load with the file and offset.
    With ``whole``, each file goes whole and unchanged to one worker instead.
    """
    headsteps.load_files(c, spread.input_files(path), target, force, str(path), whole)


@task(help={"function": "dotted path of function(out), run on the head; out.write_pair(k, v), out.write(line)",
            "target": _HELP_TARGET, "force": _HELP_FORCE})
@_reported
def initialize(c, function, target, force=False):
    """Run an input generator on the head and spread what it writes over the workers."""
    headsteps.initialize(c, function, target, force)


@task(help={"function": _HELP_FUNCTION + "; called as function(key, value), yields (key, value) pairs;"
                         " or | COMMAND, fed the lines on stdin",
            "source": _HELP_SOURCE, "target": _HELP_TARGET, "force": _HELP_FORCE,
            "combine": "dotted path of a reducer that pre-aggregates map output on each worker (a combiner),"
                       " or | COMMAND",
            "files": _HELP_FILES, "archives": _HELP_ARCHIVES, "env": _HELP_ENV},
      iterable=["files", "archives", "env"])
@_reported
def map(c, function, source, target, force=False, combine="", files=None, env=None,  # noqa: A001 - product name
        archives=None):
    """Call function(key, value) on every record; each yielded pair goes to the partition owning its key.

    With ``combine``, the pairs are first pre-aggregated by that reducer in
    bounded memory (see README "Combiners"). ``| COMMAND`` instead of a
    function runs a command with the lines on stdin (README "Streaming steps").
    """
    return headsteps.function_step(c, "map", function, source, target, force, combine, files, env, archives)


@task(help={"function": _HELP_FUNCTION + "; called as function(line, out)",
            "source": _HELP_SOURCE, "target": _HELP_TARGET, "force": _HELP_FORCE})
@_reported
def transform(c, function, source, target, force=False):
    """Call function(line, out) on every raw line; out.write_pair(k, v) and out.write(line) add output."""
    if streamspec.command_of(function) is not None:
        raise UserCodeError("transform takes a Python function; to run a command over raw lines, use map")
    headsteps.function_step(c, "transform", function, source, target, force)


@task(help={"function": _HELP_FUNCTION + "; called as function(key, values) once per key;"
                         " or | COMMAND, fed the sorted lines on stdin",
            "source": "name of a sorted dataset (the output of sort)", "target": _HELP_TARGET,
            "force": _HELP_FORCE, "files": _HELP_FILES, "archives": _HELP_ARCHIVES, "env": _HELP_ENV},
      iterable=["files", "archives", "env"])
@_reported
def reduce(c, function, source, target, force=False, files=None, env=None, archives=None):
    """Call function(key, values) once per key of sorted input, values a lazy iterator; or run | COMMAND."""
    return headsteps.function_step(c, "reduce", function, source, target, force, files=files, env=env,
                                   archives=archives)


@task(help={"source": "a dataset made by map, transform or reduce", "target": _HELP_TARGET, "force": _HELP_FORCE})
@_reported
def scatter(c, source, target, force=False):
    """Send partition i of source on every worker straight to worker i, as target there."""
    headsteps.scatter(c, source, target, force)


@task(help={"source": _HELP_SOURCE, "target": _HELP_TARGET, "force": _HELP_FORCE})
@_reported
def sort(c, source, target, force=False):
    """Group keys: sort each worker's part of source with the worker's Unix sort (LC_ALL=C)."""
    headsteps.sort(c, source, target, False, force)


@task(help={"source": _HELP_SOURCE, "target": _HELP_TARGET, "force": _HELP_FORCE})
@_reported
def sort_unique(c, source, target, force=False):
    """Like sort, keeping one copy of each distinct line (sort -u)."""
    headsteps.sort(c, source, target, True, force)


@task(help={"source": _HELP_SOURCE, "path": "local file to write on the head (replaced when complete)",
            "force": "merge again even if path holds this version of source, unchanged since"})
@_reported
def merge(c, source, path, force=False):
    """Bring source from every worker to the head, merged in sorted order into one local file."""
    headsteps.merge(c, source, path, force)


@task(help={"job": "the MRJob script, its own options and its input files, as on its command line",
            "output": "the folder to write the job's output into, as part-NNNNN files",
            "cat_output": "also write the output on stdout (mrjob's --cat-output)"})
@_reported
def mrjob(c, job, output, cat_output=False):
    """Run an unmodified mrjob script on the workers (README "Running mrjob jobs").

    ``mrjob(c, "mr_word_freq_count.py words.txt", output="counts")``; on the
    command line ``reductio mrjob mr_word_freq_count.py words.txt --output counts``.
    """
    from reductio.mrjob import runner as mrjobs

    mrjobs.run(c, shlex.split(job) if isinstance(job, str) else list(job), output, cat_output)


@task(help={"log": "the job log to read (what reductio: log: names)",
            "output": "the HTML file to write (default reductio-report.html), readable by you only"})
@_reported
def report(c, log="", output="reductio-report.html"):
    """Write an HTML report of a job log: a bar chart of seconds per step and worker, and the counters."""
    path = log or settings(c.config).get("log") or "reductio-log.jsonl"
    records = read_log(path)
    write_report(output, render(records))
    say(f"report: {len(records)} step(s) from {path} -> {output}")


@task(help={"source": "name of the dataset to remove"})
@_reported
def delete(c, source):
    """Remove a dataset on every worker."""
    check_name(source)
    cluster = Cluster.from_context(c)
    if dry(c, cluster, "delete", lambda w: {"name": source}):
        return
    results = cluster.each("delete", lambda w: w.step("delete", {"name": source}))
    held = [name for name, r in results.items() if r["deleted"]]
    say(f"delete: {source} removed from {len(held)} of {len(cluster)} worker(s)")


@task
@_reported
def status(c):
    """List each worker's datasets: marker, the step that made them and from what, files, lines, bytes."""
    cluster = Cluster.from_context(c)
    if dry(c, cluster, "status", lambda w: {}):
        return
    results = cluster.each("status", lambda w: w.step("status", {}))
    here = shape(cluster)
    rows = [("worker", "dataset", "marker", "made by", "from", "files", "lines", "bytes", "published")]
    for name, result in results.items():
        for dataset, facts in result["datasets"].items():
            if "error" in facts:
                rows.append(_status_row(name, dataset, "MISSING", "-", "-", "-", "-", "-", facts["error"]))
            else:
                made = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(facts["published"]))
                marker = "ok" if facts.get("cluster") in (None, here) else "OTHER-CLUSTER"
                rows.append(_status_row(name, dataset, marker, facts["step"], facts["from"], f"{facts['files']:,}",
                                        f"{facts['lines']:,}", f"{facts['bytes']:,}", made))
    if len(rows) == 1:
        say("status: no datasets on any worker")
        return
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _status_row(*cells) -> tuple:
    """A row of what workers said of their datasets, printable on a terminal whatever they said."""
    return tuple(printable(str(cell)) for cell in cells)
