"""Unmodified mrjob scripts on reductio's workers: each MRStep becomes map, scatter, sort and reduce commands.

The head imports the script with its own mrjob and lets mrjob's own runner
code (``MRJobBinRunner``) spell every substep's command line as mrjob's
Hadoop runner would: ``python3 -m reductio.mrjob_task JOB.py --step-num=N
--mapper`` and the job's passthrough options, ``pre_filter`` wrapped in
``sh -ex -c``, ``mapper_cmd`` as written, the job's files under their
working-folder names and its ``DIRS`` and archives unpacked there
(archives.py). mrjob's own zip of the head's mrjob goes with them (its
bootstrap), so workers need no install. reductio runs
those as streaming steps (streaming.py): the first step reads the raw
input lines, one task per input file as ``mapreduce_map_input_file``
names it (or, for ``mapper_raw``, each whole file by path, as mrjob's
manifest script hands it over), each later one the ``JSON key<TAB>JSON
value`` lines of the step before; reductio's whole-line sort groups keys
(and sorts values, as SORT_VALUES asks). jobconf and cmdenv reach the tasks
as environment variables, dots as underscores.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import re
import shutil
import sys
import tarfile
import warnings
from pathlib import Path
from typing import Dict, List

from reductio.errors import ReductioError, UserCodeError, printable
from reductio.head import gather, spread
from reductio.head import steps as headsteps
from reductio.head.cluster import Cluster
from reductio.head.feedback import user_totals
from reductio.mrjob.modules import supply_removed_modules
from reductio.mrjob.task import COMBINE_IN_MAPPER


def run(c, argv: List[str], output: str, cat_output: bool = False) -> None:
    """Run the MRJob script ``argv[0]`` with its own options and inputs ``argv[1:]``; its output into ``output``."""
    if not argv:
        raise UserCodeError("give the mrjob script to run, then its options and input files")
    runner = _runner(Path(argv[0]), argv[1:])
    try:
        _check_runner(runner)
        for path in runner._opts["py_files"]:  # on the tasks' PYTHONPATH, as mrjob's setup script puts them
            runner._working_dir_mgr.add("file", path)
        python_path = [runner._working_dir_mgr.name("file", path) for path in runner._opts["py_files"]]
        files = {name: path for name, path in runner._working_dir_mgr.name_to_path("file").items()}
        files["mrjob.zip"] = runner._create_mrjob_zip()  # the head's mrjob, for workers without one (mrjob_task)
        _archive_dirs(runner)
        archived = runner._working_dir_mgr.name_to_path("archive")
        shipped = {"files": [f"{path}#{name}" for name, path in sorted(files.items())],
                   "archives": [f"{path}#{name}" for name, path in sorted(archived.items())]}
        prefix = _prefix(Path(argv[0]), argv[1:])
        source = f"{prefix}.input"
        inputs = _inputs(runner)  # named as given, as mrjob's local runner names them: file://docs/a.txt
        headsteps.load_files(c, inputs, source, whole=runner._uses_input_manifest(),  # mapper_raw: whole
                             names=[str(path) for path in inputs])
        for number, step in enumerate(runner._get_steps()):
            source = _run_step(c, runner, number, step, source, prefix, shipped, python_path)
    finally:
        # mrjob's temp folder on the head (its zip of mrjob, the DIRS archives), success or not: mrjob's own
        # cleanup keeps it unless the runner's run() ran, and reductio runs the steps itself
        runner.cleanup(mode=["LOCAL_TMP"])
    parts = gather.fetch_parts(Cluster.from_context(c), source, output)
    if cat_output:
        for part in parts:
            with open(part, "rb") as data:
                shutil.copyfileobj(data, sys.stdout.buffer)
        sys.stdout.buffer.flush()


def _runner(script: Path, args: List[str]):
    """mrjob's own runner code for the job, configured from its command line as ``-r local`` would be."""
    try:
        with warnings.catch_warnings():  # mrjob 0.7.4 imports pipes, deprecated since Python 3.11: not the user's
            warnings.simplefilter("ignore", DeprecationWarning)
            supply_removed_modules()
            from mrjob.bin import MRJobBinRunner
            from mrjob.job import MRJob
    except ImportError:
        raise ReductioError("running mrjob jobs needs mrjob on the head: pip install 'reductio[mrjob]'") from None

    class ReductioRunner(MRJobBinRunner):
        alias = "reductio"
        _STEP_TYPES = {"streaming"}

        def _task_python_bin(self):
            return ["python3", "-m", "reductio.mrjob_task"]  # the worker's Python: first on a command's PATH

    if not script.is_file():
        raise UserCodeError(f"no mrjob script at {script}")
    spec = importlib.util.spec_from_file_location(f"_reductio_mrjob_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # mrjob finds the script's path through it
    sys.path.insert(0, str(script.resolve().parent))
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        from reductio.wire.usercode import user_error

        raise user_error(f"{script} does not import, raising", exc) from None
    finally:
        sys.path.remove(str(script.resolve().parent))
    jobs = [value for value in vars(module).values()
            if isinstance(value, type) and issubclass(value, MRJob) and value.__module__ == module.__name__]
    if len(jobs) != 1:
        raise UserCodeError(f"{script} defines {len(jobs)} MRJob classes"
                            f"{': ' + ', '.join(j.__name__ for j in jobs) if jobs else ''}; reductio runs one")
    try:
        job = jobs[0](args=[*args, "-r", "local"])
    except SystemExit as exit:  # argparse said what was wrong on stderr
        raise UserCodeError(f"{script}: the job refused its options (exit {exit.code})") from None
    _check(job._steps_desc())
    with warnings.catch_warnings():  # mrjob 0.7.4's runner calls datetime.utcnow, deprecated since Python 3.12
        warnings.simplefilter("ignore", DeprecationWarning)
        return ReductioRunner(**job._runner_kwargs())


def _check(steps: List[dict]) -> None:
    """Refuse what reductio cannot run, before anything runs."""
    for number, step in enumerate(steps):
        if step["type"] != "streaming":
            raise UserCodeError(f"step {number + 1} is a {step['type']} step; reductio runs only MRStep"
                                " (mapper, combiner, reducer) steps")
        if step.get("input_manifest") and "pre_filter" in step.get("mapper", {}):
            raise UserCodeError(f"step {number + 1} has mapper_raw and a mapper_pre_filter, which reductio"
                                " does not run together")


def _check_runner(runner) -> None:
    if runner._setup:
        raise UserCodeError("the job has setup commands, which reductio does not run yet")
    if any(path == "-" for path in runner._input_paths):
        raise UserCodeError("give the job's input as files: reductio does not read it from stdin")


def _archive_dirs(runner) -> None:
    """Each of the job's DIRS (and ``--dirs``) as the tar.gz mrjob's runner planned for it, holding the same
    members (the folder's files, links followed), but the same bytes for the same files, so a re-run finds the
    steps up to date: members sorted, no owners, no time in the gzip header."""
    for folder, tar_gz in sorted(runner._dir_to_archive_path.items()):
        if not os.path.isdir(folder):
            raise UserCodeError(f"the job's folder {folder} does not exist")
        os.makedirs(os.path.dirname(tar_gz), exist_ok=True)
        with open(tar_gz, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as zipped, \
                tarfile.open(fileobj=zipped, mode="w", dereference=True) as tar:
            for where, folders, names in os.walk(folder, followlinks=True):
                folders.sort()
                for name in sorted(names):
                    path = os.path.join(where, name)
                    tar.add(path, os.path.relpath(path, folder), recursive=False, filter=_anonymous)
        runner._dir_archives_created.add(tar_gz)


def _anonymous(member):
    member.uid = member.gid = 0
    member.uname = member.gname = ""
    return member


def _inputs(runner) -> List[Path]:
    found = []
    for path in runner._input_paths:
        found += spread.input_files(path)
    return found


def _prefix(script: Path, args: List[str]) -> str:
    """The job's dataset names start with this: the script and its arguments, so a re-run finds them."""
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", script.stem)[:40]
    digest = hashlib.sha256("\0".join([str(script.resolve()), *args]).encode()).hexdigest()[:10]
    return f"mrjob.{stem}.{digest}"


def _run_step(c, runner, number: int, step: dict, source: str, prefix: str, shipped: Dict[str, List[str]],
              python_path: List[str]) -> str:
    """Map (with its combiner), and with a reducer scatter, sort and reduce: the name of the step's output.

    ``shipped``: the job's ``files`` and ``archives`` (``PATH#NAME``); ``python_path``: the names of its
    py_files in the task's working folder."""
    from mrjob.util import cmd_line

    variables = {key.replace(".", "_"): value for key, value in runner._jobconf_for_step(number).items()}
    variables.update(runner._cmdenv())
    if python_path:
        variables["PYTHONPATH"] = ":".join(python_path + [variables.get("PYTHONPATH", "")]).rstrip(":")
    in_mapper = _combines_in_mapper(runner, step)
    if in_mapper:
        variables[COMBINE_IN_MAPPER] = "1"
    env = sorted(f"{key}={value}" for key, value in variables.items())

    def command(substep: str) -> str:
        if substep == "mapper" and step.get("input_manifest"):  # mapper_raw: the file's path and name follow
            return "| " + cmd_line(runner._script_args_for_step(number, substep))
        return "| " + cmd_line(runner._substep_args(number, substep))

    here = f"{prefix}.{number}"
    mapper = command("mapper") if "mapper" in step else "| cat"
    combine = command("combiner") if "combiner" in step and not in_mapper else ""
    counted = [headsteps.function_step(c, "map", mapper, source, f"{here}.mapped", combine=combine, env=env,
                                       **shipped)]
    target = f"{here}.mapped"
    if "reducer" in step:
        headsteps.scatter(c, target, f"{here}.here")
        headsteps.sort(c, f"{here}.here", f"{here}.sorted")
        target = f"{here}.reduced"
        counted.append(headsteps.function_step(c, "reduce", command("reducer"), f"{here}.sorted", target, env=env,
                                               **shipped))
    totals = user_totals(*filter(None, counted))  # None: skipped, up to date
    if totals:
        print(counter_lines(totals), flush=True)
    return target


def _combines_in_mapper(runner, step: dict) -> bool:
    """Whether the step's combiner can run inside its mapper's process (mrjob_task): both are the script's own,
    a reducer follows, and the combiner need not see values sorted (SORT_VALUES)."""
    return (step.get("mapper", {}).get("type") == "script" and step.get("combiner", {}).get("type") == "script"
            and "reducer" in step and not runner._sort_values)


def counter_lines(totals: Dict[str, int]) -> str:
    """User counters ``GROUP,COUNTER`` as mrjob prints them, their names safe for the terminal (``printable``)."""
    from mrjob.logs.counters import _format_counters

    grouped: Dict[str, Dict[str, int]] = {}
    for name, count in totals.items():
        group, _, counter = name.partition(",")
        grouped.setdefault(printable(group), {})[printable(counter)] = count
    return _format_counters(grouped)

