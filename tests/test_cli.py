"""The reductio program: no fabfile needed, -f as a module or a path, task names with underscores, --force."""

from __future__ import annotations

import inspect
import os
import re
import shlex
import subprocess
import sys
from collections import Counter
from pathlib import Path

import programs
from conftest import reductio_program, write_lines
from oracles import bigrams, count_table, merged_lines

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.rst").read_text(encoding="utf-8")


def reductio(*argv, cwd: Path, home: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``reductio ARGV`` run in ``cwd`` as a user whose HOME is ``home``."""
    return programs.reductio(*argv, cwd=cwd, env=dict(os.environ, HOME=str(home)), timeout=timeout)


def _readme_fabfile(folder: Path) -> Path:
    """README's "Writing a job" fabfile, exactly as printed there."""
    block = README.split("imports the tasks and adds its own::\n\n")[1].split("\n\nRun it with")[0]
    path = folder / "mymodule.py"
    path.write_text("\n".join(line[4:] for line in block.splitlines()) + "\n", encoding="utf-8")
    return path


def test_the_readme_job_runs_as_written_with_reductio_and_fab(tmp_path, isolated_home):
    folder = tmp_path / "project"
    folder.mkdir()
    text = _readme_fabfile(folder).read_text()
    words = write_lines(tmp_path / "words", ["Abba", "cab", "éclair"])
    (folder / "mymodule.py").write_text(text.replace("/usr/share/dict/words", str(words)))
    first = reductio("-f", "mymodule", "setup", "do_stuff", cwd=folder, home=isolated_home)
    assert first.returncode == 0, first.stderr
    table = dict(line.split("\t") for line in (folder / "bigrams.tsv").read_text().splitlines())
    assert table == {"ab": "2", "bb": "1", "ba": "1", "ca": "1", "éc": "1", "cl": "1", "la": "1", "ai": "1",
                     "ir": "1"}
    expected = count_table(bigrams(words.read_text(encoding="utf-8").splitlines()))
    assert merged_lines(folder / "bigrams.tsv") == expected
    again = programs.fab("-c", "mymodule", "do-stuff", cwd=folder, env=dict(os.environ, HOME=str(isolated_home)))
    assert again.returncode == 0, again.stderr
    assert "map: pairs is up to date from words; skipped" in again.stdout
    assert merged_lines(folder / "bigrams.tsv") == expected
    forced = reductio("-f", str(folder / "mymodule.py"), "--force", "do-stuff", cwd=tmp_path, home=isolated_home)
    assert forced.returncode == 0, forced.stderr
    assert "skipped" not in forced.stdout
    assert merged_lines(tmp_path / "bigrams.tsv") == expected  # merge writes where the command ran


def test_list_shows_every_task_with_a_line_of_help_and_help_shows_a_tasks_arguments():
    listing = programs.reductio("-f", str(REPO / "fabfile.py"), "--list", timeout=60)
    assert listing.returncode == 0
    for name in ("setup", "distribute", "load", "initialize", "map", "transform", "scatter", "sort",
                 "sort-unique", "reduce", "merge", "delete", "status", "report", "bigrams"):
        line = [row for row in listing.stdout.splitlines() if row.strip().startswith(name + " ")]
        assert line and len(line[0].split()) > 1, name
    help_map = programs.reductio("-f", str(REPO / "fabfile.py"), "--help", "map", timeout=60)
    assert help_map.returncode == 0
    for flag, words in (("--function", "dotted path"), ("--source", "dataset to read"),
                        ("--target", "dataset to write"), ("--combine", "combiner"), ("--force", "up to date")):
        assert flag in help_map.stdout and words in help_map.stdout, flag


def test_an_option_value_of_the_wrong_kind_is_a_usage_error_not_a_traceback(isolated_home):
    for value, message in (("abc", "a task option's value is of the wrong kind (invalid literal for int()"),
                           ("-5", "bigrams: --top is how many bigrams to print, 0 or more, not -5")):
        done = programs.reductio("-f", str(REPO / "fabfile.py"), "bigrams", "--top", value,
                                 env=dict(os.environ, HOME=str(isolated_home)), timeout=60)
        assert done.returncode == 1
        assert message in done.stderr
        assert "Traceback" not in done.stderr
        assert not (isolated_home / ".reductio").exists()  # refused before any step ran


WORD_COUNT_JOB = """\
from mrjob.job import MRJob


class MRWordCount(MRJob):
    def mapper(self, _, line):
        for word in line.split():
            yield word, 1

    def reducer(self, word, counts):
        yield word, sum(counts)


if __name__ == "__main__":
    MRWordCount.run()
"""
TEXT = ["the quick brown fox", "jumps over the lazy dog", "the dog sleeps"]
REDUCTIOS_TASKS = {"setup", "distribute", "load", "initialize", "map", "transform", "scatter", "sort", "sort-unique",
                   "reduce", "merge", "delete", "status", "report", "mrjob"}


def _job_folder(tmp_path: Path) -> Path:
    """A folder as an mrjob user has it: the job and its input, no fabfile."""
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "mr_job.py").write_text(WORD_COUNT_JOB, encoding="utf-8")
    write_lines(folder / "input.txt", TEXT)
    return folder


def _listed(listing: str) -> set:
    return {row.split()[0] for row in listing.splitlines() if row.startswith("  ") and row[2:3].strip()}  # a name


def _counted(output: Path) -> Counter:
    """The word counts of a job's part-NNNNN files (mrjob's JSON protocol: "word"<TAB>count)."""
    counts = Counter()
    for part in sorted(output.glob("part-*")):
        for line in part.read_text(encoding="utf-8").splitlines():
            key, value = line.split("\t")
            counts[key.strip('"')] += int(value)
    return counts


def test_reductios_own_tasks_run_from_a_folder_with_no_fabfile(tmp_path, isolated_home):
    folder = _job_folder(tmp_path)
    listing = reductio("--list", cwd=folder, home=isolated_home, timeout=60)
    assert listing.returncode == 0, listing.stderr
    assert REDUCTIOS_TASKS <= _listed(listing.stdout)
    dry = reductio("-H", "me@a:2200,b", "-R", "setup", cwd=folder, home=isolated_home, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert [line.split(":")[0] for line in dry.stdout.splitlines()] == ["a", "b"]  # the cluster, nothing run
    setup = reductio("setup", cwd=folder, home=isolated_home)
    assert setup.returncode == 0, setup.stderr
    assert f"distribute: local workers import {folder}" in setup.stdout
    job = reductio("mrjob", "mr_job.py", "input.txt", "--output", "out", cwd=folder, home=isolated_home)
    assert job.returncode == 0, job.stderr
    assert _counted(folder / "out") == Counter(word for line in TEXT for word in line.split())
    for argv in (("load", "input.txt", "lines"), ("map", "| tr a-z A-Z", "lines", "upper"),
                 ("merge", "upper", "upper.txt")):
        step = reductio(*argv, cwd=folder, home=isolated_home)
        assert step.returncode == 0, step.stderr
    assert (folder / "upper.txt").read_text().splitlines() == sorted(line.upper() for line in TEXT)


def test_readmes_task_table_names_every_task_reductio_lists_and_no_other(tmp_path, isolated_home):
    listing = reductio("--list", cwd=tmp_path, home=isolated_home, timeout=60)
    assert listing.returncode == 0, listing.stderr
    section = README.split("\nTasks\n-----\n")[1].splitlines()
    rules = [number for number, line in enumerate(section) if line.startswith("=====")]
    rows = section[rules[1] + 1:rules[2]]  # the table's rows: under its heading's rule, to its end
    named = {row.split()[0].replace("_", "-") for row in rows if row[:1].strip()}
    assert named == _listed(listing.stdout), named ^ _listed(listing.stdout)


def test_python_m_reductio_is_the_program_setup_py_installs_as_reductio(tmp_path, isolated_home):
    entry = re.search(r'"reductio = ([\w.]+):([\w.]+)"', (REPO / "setup.py").read_text()).groups()
    script = ("import sys, importlib; from functools import reduce\n"
              f"target = reduce(getattr, {entry[1]!r}.split('.'), importlib.import_module({entry[0]!r}))\n"
              "sys.argv[0] = 'reductio'; target()\n")  # what the console script does
    env = programs.importing_the_suites_reductio(dict(os.environ, HOME=str(isolated_home)))
    for argv in (["--version"], ["--list"], ["--help", "report"]):
        as_module = programs.run([sys.executable, "-m", "reductio", *argv], 60, cwd=tmp_path, text=True, env=env)
        as_script = programs.run([sys.executable, "-c", script, *argv], 60, what="reductio's console script",
                                 cwd=tmp_path, text=True, env=env)
        assert as_module.returncode == as_script.returncode == 0, as_module.stderr + as_script.stderr
        assert as_module.stdout == as_script.stdout and as_module.stdout


FABFILE = """\
from invoke import task


@task
def hello(c):
    print("hello from the fabfile")


@task
def status(c):
    print("the fabfile's own status")
"""


def test_beside_an_unrelated_fabfile_its_tasks_stand_with_reductios_and_win_a_shared_name(tmp_path, isolated_home):
    folder = _job_folder(tmp_path)
    (folder / "fabfile.py").write_text(FABFILE, encoding="utf-8")
    listing = reductio("--list", cwd=folder, home=isolated_home, timeout=60)
    assert listing.returncode == 0, listing.stderr
    assert REDUCTIOS_TASKS | {"hello"} <= _listed(listing.stdout)
    for task, said in (("hello", "hello from the fabfile"), ("status", "the fabfile's own status")):
        done = reductio(task, cwd=folder, home=isolated_home, timeout=60)
        assert (done.returncode, done.stdout.strip()) == (0, said), done.stderr
    assert reductio("setup", cwd=folder, home=isolated_home).returncode == 0
    job = reductio("mrjob", "mr_job.py", "input.txt", "--output", "out", cwd=folder, home=isolated_home)
    assert job.returncode == 0, job.stderr
    assert _counted(folder / "out") == Counter(word for line in TEXT for word in line.split())


def test_a_task_module_named_with_f_that_is_not_there_is_an_error_not_reductios_tasks(tmp_path, isolated_home):
    done = reductio("-f", "nosuch.py", "--list", cwd=tmp_path, home=isolated_home, timeout=60)
    assert done.returncode == 1
    assert done.stderr == f"reductio: no task module 'nosuch' at or above {tmp_path}\n"
    assert not done.stdout


def test_after_any_of_reductios_tasks_f_is_its_force_and_nothing_else(tmp_path):
    from reductio import tasks
    from reductio.cli import make_program

    (tmp_path / "fabfile.py").write_text("from invoke import task\n\n@task\ndef fetch(c, file=''):\n    pass\n")
    program = make_program()
    program.run(["reductio", "-f", str(tmp_path / "fabfile.py"), "--list"], exit=False)
    checked = 0
    for name, context in program.parser.contexts.items():
        if name in REDUCTIOS_TASKS:
            if "force" in inspect.signature(getattr(tasks, name.replace("-", "_")).body).parameters:
                assert context.flags["-f"].name == "force", name
                checked += 1
            else:
                assert "-f" not in context.flags, name
    assert checked == 9  # load initialize map transform scatter sort sort-unique reduce merge
    assert program.parser.contexts["map"].flags["--function"].names == ("function",)
    assert program.parser.contexts["fetch"].flags["-f"].name == "file"  # a fabfile's own task keeps invoke's letters


def test_a_reader_that_stops_reading_ends_the_program_quietly(tmp_path, isolated_home):
    reading, writing = os.pipe()
    os.close(reading)  # as when head -1 has read its line and gone: the next write meets a pipe no one reads
    try:
        done = programs.reductio("status", stdout=writing, stderr=subprocess.PIPE, cwd=tmp_path,
                                 env=dict(os.environ, HOME=str(isolated_home)), timeout=120)
    finally:
        os.close(writing)
    assert done.stderr == ""
    assert done.returncode == 141  # 128 + SIGPIPE, as a shell reports cat | head -1 under pipefail
    piped = programs.run(f"{shlex.join(reductio_program('status'))} | head -1", 120, what="reductio status | head -1",
                         shell=True, text=True, cwd=tmp_path, env=dict(os.environ, HOME=str(isolated_home)))
    assert (piped.returncode, piped.stdout, piped.stderr) == (0, "reductio: status: no datasets on any worker\n", "")


JOB_LOG = ('{"step": "map", "target": "pairs", "seconds": 1.5, "finished": 1,'
           ' "workers": {"local-0": {"seconds": 1.5, "lines in": 3}}}\n')


def test_report_takes_its_log_and_output_as_positional_arguments_and_writes_for_its_owner_only(tmp_path,
                                                                                               isolated_home):
    (tmp_path / "job.jsonl").write_text(JOB_LOG)
    (tmp_path / "old.html").write_text("an earlier report")
    os.chmod(tmp_path / "old.html", 0o644)
    for output in ("out.html", "old.html"):
        done = reductio("report", "job.jsonl", output, cwd=tmp_path, home=isolated_home, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout == f"reductio: report: 1 step(s) from job.jsonl -> {output}\n"
        page = tmp_path / output
        assert "reductio job report" in page.read_text() and "local-0" in page.read_text()
        assert page.stat().st_mode & 0o777 == 0o600
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no scratch file left behind


def test_report_refuses_a_symbolic_link_at_its_output_path_and_leaves_what_it_points_at(tmp_path, isolated_home):
    (tmp_path / "job.jsonl").write_text(JOB_LOG)
    victim = tmp_path / "victim.txt"
    victim.write_text("not a report")
    (tmp_path / "report.html").symlink_to(victim)
    done = reductio("report", "--log", "job.jsonl", "--output", "report.html", cwd=tmp_path, home=isolated_home,
                    timeout=60)
    assert done.returncode == 1
    assert done.stderr == "reductio: report output report.html is a symbolic link; give the path of the file itself\n"
    assert victim.read_text() == "not a report" and (tmp_path / "report.html").is_symlink()


def test_the_readme_job_runs_as_written_on_ssh_workers_that_have_no_fabric(ssh_workers, tmp_path, isolated_home):
    """README's module imports fabric and reductio.tasks at the top; the workers' environments have neither
    Fabric nor invoke (nor an index to fetch them from), and the map and reduce import that module there."""
    ssh_workers(2)
    project = tmp_path / "project"
    project.mkdir()
    (project / "setup.py").write_text('from setuptools import setup\n\nsetup(name="mymodule", version="1.0",'
                                      ' py_modules=["mymodule"])\n')
    text = _readme_fabfile(project).read_text()
    words = write_lines(tmp_path / "words", ["Abba", "cab", "éclair", "abba"])
    (project / "mymodule.py").write_text(text.replace("/usr/share/dict/words", str(words)))
    done = programs.reductio("-f", str(project / "mymodule.py"), "setup", "do_stuff",
                             env=dict(os.environ, HOME=str(isolated_home)), timeout=600)
    assert done.returncode == 0, done.stderr
    assert "installed mymodule-1.0.tar.gz on ssh-0, ssh-1" in done.stdout
    expected = Counter(a + b for word in ("abba", "cab", "éclair", "abba") for a, b in zip(word, word[1:]))
    table = dict(line.split("\t") for line in Path("bigrams.tsv").read_text().splitlines())
    assert table == {pair: str(count) for pair, count in expected.items()}
