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
import shlex
import sys
import tempfile
import time
from pathlib import Path

from invoke import Exit, task

from reductio import gather, packaging, shellcost, shipping, shuffle, spread, streaming
from reductio.cluster import Cluster, project_folder
from reductio.config import settings
from reductio.errors import DatasetError, ReductioError, UserCodeError, printable
from reductio.feedback import log_step, report_step
from reductio.job import Survey, digest_of, run_and_publish, shape
from reductio.records import record_limit
from reductio.report import read_log, render, write_report
from reductio.steps import code_digest, load_function, unknown_code, user_error
from reductio.store import FILES, RECORDS, TEXT, check_name
from reductio.trust import install_trust, revoke_trust

__all__ = [
    "setup", "distribute", "load", "initialize", "map", "transform", "scatter",
    "sort", "sort_unique", "reduce", "merge", "delete", "status", "report", "mrjob", "revoke",
]

_FUNCTION = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")
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


def _say(text: str) -> None:
    print(f"reductio: {text}", flush=True)


def _up_to_date(c, survey: Survey, facts: dict, target: str, force: bool) -> bool:
    """True (with a one-line notice) if the target was made from the same source, code and settings."""
    if force or settings(c.config).get("force"):
        return False
    why = unknown_code(survey.code or facts.get("code"))
    if why:
        _say(f"{facts['step']}: cannot tell whether the code changed ({why}); running it")
        return False
    if not survey.current(facts):
        return False
    _skipped(c, facts["step"], target, facts.get("source"))
    return True


def _skipped(c, step: str, target: str, source: str = None) -> None:
    origin = f" from {source}" if source else ""
    _say(f"{step}: {target} is up to date{origin}; skipped (--force redoes it)")
    log_step(c.config, {"step": step, "target": target, "skipped": True, "finished": time.time()})


def _dry(c, cluster, step: str, params_for) -> bool:
    """With -R/--dry: print the command each worker would run for this step, and run nothing."""
    if not c.config.run.dry:
        return False
    for worker in cluster.workers:
        print(f"{worker.name}: {worker.command(step, dict(params_for(worker), attempt='DRY-RUN'))}")
    return True


def _check_function(path: str) -> str:
    if streaming.command_of(path):
        return path
    if not isinstance(path, str) or not _FUNCTION.fullmatch(path):
        raise UserCodeError(f"bad function path {path!r}: give package.module.function, or | COMMAND")
    return path


@task
@_reported
def setup(c):
    """Prepare every worker (home, Python environment, reductio, cluster key), then distribute."""
    cluster = Cluster.from_context(c)
    if _dry(c, cluster, "prepare", lambda w: {}):
        return
    remote = [w for w in cluster.workers if not w.is_local]
    if remote:
        cluster.each("setup", packaging.ensure_venv, remote)
        with tempfile.TemporaryDirectory(prefix="reductio-sdist-") as scratch:
            updated = packaging.deploy(cluster, "reductio", packaging.reductio_sdist(Path(scratch)))
        if updated:
            _say(f"setup: installed reductio on {', '.join(updated)}")
    cluster.each("setup", lambda w: w.step("prepare", {}))
    install_trust(cluster)
    if remote:
        limit = settings(c.config).get("slow_command", shellcost.SLOW_COMMAND)
        for line in shellcost.advice(shellcost.measure(cluster, remote), len(cluster), limit):
            _say(f"setup: {line}")
    _say(f"setup: {len(cluster)} worker(s) ready: {', '.join(w.name for w in cluster.workers)}")
    distribute(c)


@task(help={"everywhere": "remove every cluster key's line on the workers' accounts, whatever homes it serves"})
@_reported
def revoke(c, everywhere=False):
    """Revoke the cluster key for this cluster's homes on its SSH workers: scatter stops until setup runs again."""
    removed = revoke_trust(Cluster.from_context(c), everywhere)
    _say(f"revoke: {sum(removed.values())} cluster key line(s) removed or cut on {len(removed)} worker(s)")


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
    if _dry(c, cluster, "prepare", lambda w: {}):
        return
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
    wheelhouse = settings(c.config).get("wheelhouse")
    with tempfile.TemporaryDirectory(prefix="reductio-sdist-") as scratch:
        sdist = packaging.build_sdist(project, Path(scratch))
        updated = packaging.deploy(cluster, "project", sdist, Path(wheelhouse) if wheelhouse else None)
    if updated:
        _say(f"distribute: installed {sdist.name} on {', '.join(updated)}")
    else:
        _say(f"distribute: {sdist.name} unchanged on every SSH worker")


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
    load_files(c, spread.input_files(path), target, force, str(path), whole)


def load_files(c, files: list, target: str, force: bool = False, label: str = None, whole: bool = False,
               names: list = None) -> None:
    """load's body for a list of files (``label``: how the step's line and marker name them; ``names``: how a
    map command's ``mapreduce_map_input_file`` names each file, its absolute path unless given)."""
    check_name(target)
    label = label or ", ".join(str(p) for p in files)
    cluster = Cluster.from_context(c)
    if _dry(c, cluster, "receive", lambda w: {}):
        return
    started = time.time()
    listing = digest_of(f"{p.resolve()}\t{p.stat().st_size}\t{p.stat().st_mtime_ns}" for p in files)
    limit = record_limit(settings(c.config).get("max_record"))  # a setting that changes the output: in the facts
    facts = {"step": "load", "path": label, "input": listing, "format": FILES if whole else TEXT,
             "partitions": None, "workers": len(cluster), "max_record": limit}
    if _up_to_date(c, Survey(cluster, "load", target), facts, target, force):
        return
    feed = spread.load_feed(files, len(cluster), whole, limit)
    received = spread.spread(cluster, target, "load", feed, facts, names or [os.path.abspath(p) for p in files])
    seconds = time.time() - started
    report_step(c.config, f"load: {label} -> {target} ({seconds:.1f} s)", "load", spread.arrivals(received),
                {"path": label, "target": target, "seconds": seconds})


@task(help={"function": "dotted path of function(out), run on the head; out.write_pair(k, v), out.write(line)",
            "target": _HELP_TARGET, "force": _HELP_FORCE})
@_reported
def initialize(c, function, target, force=False):
    """Run an input generator on the head and spread what it writes over the workers."""
    check_name(target)
    folder = project_folder(c)
    if folder not in sys.path:  # the head imports the project as the local workers do
        sys.path.insert(0, folder)
    generate = load_function(_check_function(function))
    cluster = Cluster.from_context(c)
    if _dry(c, cluster, "receive", lambda w: {}):
        return
    facts = {"step": "initialize", "function": function, "code": code_digest([function]), "format": TEXT,
             "partitions": None, "workers": len(cluster),
             "max_record": record_limit(settings(c.config).get("max_record"))}
    if _up_to_date(c, Survey(cluster, "initialize", target), facts, target, force):
        return

    def feed(spreader):
        out = spread.SpreadingOutput(function, spreader, record_limit(settings(c.config).get("max_record")))
        try:
            generate(out)
        except ReductioError:
            raise
        except Exception as exc:
            raise user_error(f"{function} raised", exc) from None
        out.flush()

    started = time.time()
    received = spread.spread(cluster, target, "initialize", feed, facts)
    seconds = time.time() - started
    report_step(c.config, f"initialize: {function} -> {target} ({seconds:.1f} s)", "initialize",
                spread.arrivals(received), {"function": function, "target": target, "seconds": seconds})


def _function_step(c, step: str, function: str, source: str, target: str, force: bool, combine: str = "",
                   files=None, env=None, archives=None):
    """map, transform and reduce: run the function or command on every worker, partition its output.

    Returns each worker's result, or None when the step was up to date."""
    functions = [_check_function(function)] + ([_check_function(combine)] if combine else [])
    commands = [spec for spec in functions if streaming.command_of(spec) is not None]
    if (files or archives or env) and not commands:
        raise UserCodeError("files, archives and env are for a command (| COMMAND), not a Python function")
    if combine and streaming.command_of(combine) is not None and streaming.command_of(function) is None:
        raise UserCodeError("a combiner command needs a mapper command; give the combiner as a Python function")
    shipped = shipping.digests(files)
    unpacked = shipping.digests(archives, taken=shipped, unpack=True)
    variables = streaming.check_env(env)
    check_name(source)
    check_name(target)
    cluster = Cluster.from_context(c)

    found = settings(c.config)
    limit = found.get("combine_limit")
    processes = found.get("processes")

    def params_for(worker):
        params = {"function": function, "combine": combine, "combine_limit": limit,
                  "max_record": found.get("max_record"), "source": source,
                  "partitions": len(cluster), "origin": f"w{worker.index:05d}",
                  "processes": worker.spec.processes or processes, "sharing": cluster.sharing(worker)}
        if commands:
            params.update(files={name: digest for name, (_, digest) in shipped.items()},
                          archives={name: digest for name, (_, digest) in unpacked.items()}, env=variables,
                          sort_buffer=found.get("sort_buffer"), max_unpacked=found.get("max_unpacked"),
                          max_members=found.get("max_members"))
        return params

    if _dry(c, cluster, step, params_for):
        return
    started = time.time()
    survey = Survey(cluster, step, target, source, [f for f in functions if f not in commands],
                    [digest for _, digest in [*shipped.values(), *unpacked.values()]])
    if step != "map" or streaming.command_of(function) is None:
        _refuse_whole_files(survey, source, f"{step} with a function")
    code = survey.code
    if commands:  # what a command runs is its text, its files, archives and environment
        code = "-".join(filter(None, [code, digest_of([*commands, *sorted(f"{n}={d}" for n, (_, d) in shipped.items()),
                                                       *sorted(f"archive {n}={d}" for n, (_, d) in unpacked.items()),
                                                       *sorted(f"{k}={v}" for k, v in variables.items())])]))
    text = step == "transform" or streaming.command_of(function) is not None
    facts = {"step": step, "function": function, "code": code, "source": source,
             "source_attempt": survey.source["attempt"], "format": TEXT if text else RECORDS,
             "partitions": len(cluster), "max_record": record_limit(found.get("max_record"))}
    if combine:
        facts.update(combine=combine, combine_limit=limit)  # the limit decides which pairs are combined together
    if _up_to_date(c, survey, facts, target, force):
        return
    shipping.ship(cluster, survey, {**shipped, **unpacked})
    results = run_and_publish(cluster, step, params_for, target, facts)
    seconds = time.time() - started
    report_step(c.config, f"{step}: {function} {source} -> {target} ({seconds:.1f} s)", step, results,
                {"function": function, "source": source, "target": target, "seconds": seconds})
    return results


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
    return _function_step(c, "map", function, source, target, force, combine, files, env, archives)


@task(help={"function": _HELP_FUNCTION + "; called as function(line, out)",
            "source": _HELP_SOURCE, "target": _HELP_TARGET, "force": _HELP_FORCE})
@_reported
def transform(c, function, source, target, force=False):
    """Call function(line, out) on every raw line; out.write_pair(k, v) and out.write(line) add output."""
    if streaming.command_of(function) is not None:
        raise UserCodeError("transform takes a Python function; to run a command over raw lines, use map")
    _function_step(c, "transform", function, source, target, force)


@task(help={"function": _HELP_FUNCTION + "; called as function(key, values) once per key;"
                         " or | COMMAND, fed the sorted lines on stdin",
            "source": "name of a sorted dataset (the output of sort)", "target": _HELP_TARGET,
            "force": _HELP_FORCE, "files": _HELP_FILES, "archives": _HELP_ARCHIVES, "env": _HELP_ENV},
      iterable=["files", "archives", "env"])
@_reported
def reduce(c, function, source, target, force=False, files=None, env=None, archives=None):
    """Call function(key, values) once per key of sorted input, values a lazy iterator; or run | COMMAND."""
    return _function_step(c, "reduce", function, source, target, force, files=files, env=env, archives=archives)


@task(help={"source": "a dataset made by map, transform or reduce", "target": _HELP_TARGET, "force": _HELP_FORCE})
@_reported
def scatter(c, source, target, force=False):
    """Send partition i of source on every worker straight to worker i, as target there."""
    check_name(source)
    check_name(target)
    cluster = Cluster.from_context(c)
    if _dry(c, cluster, "send", lambda w: shuffle.send_params(cluster, w, source)):
        return
    survey = Survey(cluster, "scatter", target, source, source_files=True)  # what each sender will send
    if not survey.source["partitions"] or survey.source.get("step") in ("sort", "sort_unique", "load", "initialize"):
        made = f" (made by {survey.source['step']})" if survey.source.get("step") else ""
        raise DatasetError(f"dataset {source!r} is not partitioned{made}; scatter moves what map, transform or"
                           " reduce wrote: scatter that, then sort")
    facts = {"step": "scatter", "source": source, "source_attempt": survey.source["attempt"],
             "format": survey.source["format"], "partitions": len(cluster)}
    if _up_to_date(c, survey, facts, target, force):
        return
    started = time.time()
    results = shuffle.scatter(cluster, source, target, facts, survey.checks)
    placed = sum(r["counters"]["bytes in"] for r in results.values())
    crossed = sum(r["counters"]["bytes crossed"] for r in results.values())
    report_step(c.config, f"scatter: {source} -> {target}: {placed:,} bytes placed, {crossed:,} of them crossing"
                f" between workers ({time.time() - started:.1f} s)",
                "scatter", results, {"source": source, "target": target, "seconds": time.time() - started})


def _refuse_whole_files(survey: Survey, source: str, what: str) -> None:
    """Whole files (load --whole) are not lines: only a map command reads them, each named on its command line."""
    if survey.source["format"] == FILES:
        raise DatasetError(f"dataset {source!r} holds whole files (load --whole), which {what} cannot read;"
                           " map them with a command (| COMMAND)")


def _sort_step(c, source: str, target: str, unique: bool, force: bool) -> None:
    check_name(source)
    check_name(target)
    cluster = Cluster.from_context(c)
    step = "sort_unique" if unique else "sort"

    found = settings(c.config)

    def params_for(worker):
        return {"source": source, "unique": unique, "origin": f"w{worker.index:05d}",
                "buffer": found.get("sort_buffer"), "parallel": found.get("sort_parallel")}

    if _dry(c, cluster, "sort", params_for):
        return
    started = time.time()
    survey = Survey(cluster, step, target, source)
    _refuse_whole_files(survey, source, step)
    facts = {"step": step, "source": source, "source_attempt": survey.source["attempt"],
             "format": survey.source["format"], "partitions": None}  # one sorted file per worker: not partitioned
    if _up_to_date(c, survey, facts, target, force):
        return
    results = run_and_publish(cluster, "sort", params_for, target, facts)
    seconds = time.time() - started
    report_step(c.config, f"{step}: {source} -> {target} ({seconds:.1f} s)", step, results,
                {"source": source, "target": target, "seconds": seconds})


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


@task(help={"source": _HELP_SOURCE, "path": "local file to write on the head (replaced when complete)",
            "force": "merge again even if path holds this version of source, unchanged since"})
@_reported
def merge(c, source, path, force=False):
    """Bring source from every worker to the head, merged in sorted order into one local file."""
    check_name(source)
    cluster = Cluster.from_context(c)
    if _dry(c, cluster, "cat", lambda w: {"source": source, "attempt": "DRY-RUN"}):
        return
    survey = Survey(cluster, "merge", source, source)
    _refuse_whole_files(survey, source, "merge")
    if not (force or settings(c.config).get("force")):
        if gather.merged(path, source, survey.source["attempt"]):
            _skipped(c, "merge", path, source)
            return
    started = time.time()
    size = gather.merge_to_file(cluster, source, path)
    seconds = time.time() - started
    _say(f"merge: {source} -> {path} ({size:,} bytes, {seconds:.1f} s)")
    log_step(c.config, {"step": "merge", "source": source, "target": str(path), "seconds": seconds,
                        "finished": time.time()})


@task(help={"job": "the MRJob script, its own options and its input files, as on its command line",
            "output": "the folder to write the job's output into, as part-NNNNN files",
            "cat_output": "also write the output on stdout (mrjob's --cat-output)"})
@_reported
def mrjob(c, job, output, cat_output=False):
    """Run an unmodified mrjob script on the workers (README "Running mrjob jobs").

    ``mrjob(c, "mr_word_freq_count.py words.txt", output="counts")``; on the
    command line ``reductio mrjob mr_word_freq_count.py words.txt --output counts``.
    """
    from reductio import mrjobs

    mrjobs.run(c, shlex.split(job) if isinstance(job, str) else list(job), output, cat_output)


@task(help={"log": "the job log to read (what reductio: log: names)",
            "output": "the HTML file to write (default reductio-report.html), readable by you only"})
@_reported
def report(c, log="", output="reductio-report.html"):
    """Write an HTML report of a job log: a bar chart of seconds per step and worker, and the counters."""
    path = log or settings(c.config).get("log") or "reductio-log.jsonl"
    records = read_log(path)
    write_report(output, render(records))
    _say(f"report: {len(records)} step(s) from {path} -> {output}")


@task(help={"source": "name of the dataset to remove"})
@_reported
def delete(c, source):
    """Remove a dataset on every worker."""
    check_name(source)
    cluster = Cluster.from_context(c)
    if _dry(c, cluster, "delete", lambda w: {"name": source}):
        return
    results = cluster.each("delete", lambda w: w.step("delete", {"name": source}))
    held = [name for name, r in results.items() if r["deleted"]]
    _say(f"delete: {source} removed from {len(held)} of {len(cluster)} worker(s)")


@task
@_reported
def status(c):
    """List each worker's datasets: marker, the step that made them and from what, files, lines, bytes."""
    cluster = Cluster.from_context(c)
    if _dry(c, cluster, "status", lambda w: {}):
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
        _say("status: no datasets on any worker")
        return
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _status_row(*cells) -> tuple:
    """A row of what workers said of their datasets, printable on a terminal whatever they said."""
    return tuple(printable(str(cell)) for cell in cells)
