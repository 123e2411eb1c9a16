"""The head's half of each data step: check the names, skip what is up to date, fan out, publish, report.

tasks.py gives these their command line (invoke's ``@task``) and their one-line errors; the mrjob runner
(mrjobs.py) calls them for each MRStep. Each takes the task's context ``c`` first, as a task does. What runs
on the workers is datasteps.py and control.py; the fan-out and the all-or-nothing publish are job.py's.
"""

from __future__ import annotations

import os
import re
import sys
import time

from reductio.errors import DatasetError, ReductioError, UserCodeError
from reductio.head import gather, shipping, shuffle, spread
from reductio.head.cluster import Cluster, project_folder
from reductio.head.config import settings
from reductio.head.feedback import log_step, report_step
from reductio.head.job import Survey, digest_of, run_and_publish
from reductio.wire import streamspec
from reductio.wire.datasets import FILES, RECORDS, TEXT, check_name
from reductio.wire.records import record_limit
from reductio.wire.usercode import code_digest, load_function, unknown_code, user_error

_FUNCTION = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")


def say(text: str) -> None:
    """One line for the user on stdout, as every task's lines start."""
    print(f"reductio: {text}", flush=True)


def dry(c, cluster, step: str, params_for) -> bool:
    """With -R/--dry: print the command each worker would run for this step, and run nothing."""
    if not c.config.run.dry:
        return False
    for worker in cluster.workers:
        print(f"{worker.name}: {worker.command(step, dict(params_for(worker), attempt='DRY-RUN'))}")
    return True


def _up_to_date(c, survey: Survey, facts: dict, target: str, force: bool) -> bool:
    """True (with a one-line notice) if the target was made from the same source, code and settings."""
    if force or settings(c.config).get("force"):
        return False
    why = unknown_code(survey.code or facts.get("code"))
    if why:
        say(f"{facts['step']}: cannot tell whether the code changed ({why}); running it")
        return False
    if not survey.current(facts):
        return False
    _skipped(c, facts["step"], target, facts.get("source"))
    return True


def _skipped(c, step: str, target: str, source: str = None) -> None:
    origin = f" from {source}" if source else ""
    say(f"{step}: {target} is up to date{origin}; skipped (--force redoes it)")
    log_step(c.config, {"step": step, "target": target, "skipped": True, "finished": time.time()})


def _check_function(path: str) -> str:
    if streamspec.command_of(path):
        return path
    if not isinstance(path, str) or not _FUNCTION.fullmatch(path):
        raise UserCodeError(f"bad function path {path!r}: give package.module.function, or | COMMAND")
    return path


def load_files(c, files: list, target: str, force: bool = False, label: str = None, whole: bool = False,
               names: list = None) -> None:
    """load's body for a list of files (``label``: how the step's line and marker name them; ``names``: how a
    map command's ``mapreduce_map_input_file`` names each file, its absolute path unless given)."""
    check_name(target)
    label = label or ", ".join(str(p) for p in files)
    cluster = Cluster.from_context(c)
    if dry(c, cluster, "receive", lambda w: {}):
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


def initialize(c, function: str, target: str, force: bool = False) -> None:
    """initialize's body: run ``function(out)`` here and spread what it writes over the workers."""
    check_name(target)
    folder = project_folder(c)
    if folder not in sys.path:  # the head imports the project as the local workers do
        sys.path.insert(0, folder)
    generate = load_function(_check_function(function))
    cluster = Cluster.from_context(c)
    if dry(c, cluster, "receive", lambda w: {}):
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


def function_step(c, step: str, function: str, source: str, target: str, force: bool = False, combine: str = "",
                  files=None, env=None, archives=None):
    """map, transform and reduce: run the function or command on every worker, partition its output.

    Returns each worker's result, or None when the step was up to date."""
    functions = [_check_function(function)] + ([_check_function(combine)] if combine else [])
    commands = [spec for spec in functions if streamspec.command_of(spec) is not None]
    if (files or archives or env) and not commands:
        raise UserCodeError("files, archives and env are for a command (| COMMAND), not a Python function")
    if combine and streamspec.command_of(combine) is not None and streamspec.command_of(function) is None:
        raise UserCodeError("a combiner command needs a mapper command; give the combiner as a Python function")
    shipped = shipping.digests(files)
    unpacked = shipping.digests(archives, taken=shipped, unpack=True)
    variables = streamspec.check_env(env)
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

    if dry(c, cluster, step, params_for):
        return
    started = time.time()
    survey = Survey(cluster, step, target, source, [f for f in functions if f not in commands],
                    [digest for _, digest in [*shipped.values(), *unpacked.values()]])
    if step != "map" or streamspec.command_of(function) is None:
        _refuse_whole_files(survey, source, f"{step} with a function")
    code = survey.code
    if commands:  # what a command runs is its text, its files, archives and environment
        code = "-".join(filter(None, [code, digest_of([*commands, *sorted(f"{n}={d}" for n, (_, d) in shipped.items()),
                                                       *sorted(f"archive {n}={d}" for n, (_, d) in unpacked.items()),
                                                       *sorted(f"{k}={v}" for k, v in variables.items())])]))
    text = step == "transform" or streamspec.command_of(function) is not None
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


def scatter(c, source: str, target: str, force: bool = False) -> None:
    """scatter's body: partition i of ``source`` on every worker goes to worker i."""
    check_name(source)
    check_name(target)
    cluster = Cluster.from_context(c)
    if dry(c, cluster, "send", lambda w: shuffle.send_params(cluster, w, source)):
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


def sort(c, source: str, target: str, unique: bool = False, force: bool = False) -> None:
    """sort's and sort_unique's body: each worker sorts its part of ``source`` (``unique``: one copy a line)."""
    check_name(source)
    check_name(target)
    cluster = Cluster.from_context(c)
    step = "sort_unique" if unique else "sort"

    found = settings(c.config)

    def params_for(worker):
        return {"source": source, "unique": unique, "origin": f"w{worker.index:05d}",
                "buffer": found.get("sort_buffer"), "parallel": found.get("sort_parallel")}

    if dry(c, cluster, "sort", params_for):
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


def merge(c, source: str, path: str, force: bool = False) -> None:
    """merge's body: ``source`` from every worker into the local file ``path``, in sorted order."""
    check_name(source)
    cluster = Cluster.from_context(c)
    if dry(c, cluster, "cat", lambda w: {"source": source, "attempt": "DRY-RUN"}):
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
    say(f"merge: {source} -> {path} ({size:,} bytes, {seconds:.1f} s)")
    log_step(c.config, {"step": "merge", "source": source, "target": str(path), "seconds": seconds,
                        "finished": time.time()})
