"""PyPy workers run every kind of job: Debian's pypy3 and pypy3-venv, real sshd, SSH and local workers.

One cluster of each kind is set up once for the module (a PyPy venv on each SSH worker, ``python = pypy3``
for local workers) and runs a job of each kind: functions with a combiner, commands (a Python script and
shell), an mrjob script, archives and files. Every job reports which Python ran its code, and every result is
checked against a count made here.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import tarfile
import textwrap
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from conftest import make_context, write_lines
from reductio import tasks

pytestmark = pytest.mark.timeout(600)  # the module's PyPy venvs are made in the first test's setup

TEXT = [f"w{i % 37} W{i % 11} pypy{i % 5} it's ünï{i % 3}" for i in range(2000)]
INPUT = "dönnées.txt"  # a name PyPy could not encode in the C locale
WORDS = Counter(word for line in TEXT for word in line.split())

# The project the jobs' functions come from, installed on the SSH workers by setup's distribute.
PROJECT = {
    "setup.py": 'from setuptools import setup\nsetup(name="pypyjobs", version="0.1", packages=["pypyjobs"])\n',
    "pypyjobs/__init__.py": '''\
        """Functions that say which Python ran them."""
        import platform


        def words(key, value):
            """Each word with a count of 1, and one count per line for the Python that read it."""
            yield "python:" + platform.python_implementation(), "1"
            for word in (value or key).split():
                yield word, "1"


        def total(key, values):
            """The values' sum, and the Python that summed them."""
            yield key, str(sum(int(value) for value in values)) + " " + platform.python_implementation()


        def lower_words(line, out):
            """A transform: each word lowered, as a pair, and the Python that read the line as a raw line."""
            for word in line.split():
                out.write_pair(word.lower(), "1")
            out.write("read by " + platform.python_implementation())
        ''',
}

# A Hadoop Streaming mapper and reducer: python3 on a command's PATH is the worker's own Python.
MAPPER = """\
import os, platform, sys
for line in sys.stdin:
    print("python:" + platform.python_implementation() + "\\t1")
    print("file:" + os.path.basename(os.environ["mapreduce_map_input_file"]) + "\\t1")
    for word in line.split():
        print(word + "\\t1")
"""
REDUCER = """\
import platform, sys
from itertools import groupby
rows = (line.rstrip("\\n").split("\\t", 1) for line in sys.stdin)
for key, group in groupby(rows, lambda row: row[0]):
    print(key + "\\t" + str(sum(int(value) for _, value in group)) + " " + platform.python_implementation())
"""
# Each word's class from the model archive, stop words from the zip skipped: files, archives and env at once.
LOOKUP = """\
import os, platform, sys
classes = dict(line.split() for line in open("model/classes.txt"))
stop = set(open("stop/words.txt").read().split())
print("python:" + platform.python_implementation() + "\\t1")
for line in sys.stdin:
    for word in line.split():
        if word not in stop and len(word) >= int(os.environ["MIN_LENGTH"]):
            print(classes.get(word, "other") + "\\t1")
"""
SUM_BY_KEY = "| awk -F '\\t' '{n[$1] += $2} END {for (k in n) print k \"\\t\" n[k]}'"
MRJOB_SCRIPT = """\
import os, platform, re
from mrjob.job import MRJob
WORD = re.compile(r"[\\w']+")


class MRWordsAndPython(MRJob):
    def mapper(self, _, line):
        yield "python:" + platform.python_implementation(), 1
        yield "file:" + os.path.basename(os.environ["mapreduce_map_input_file"]), 1
        for word in WORD.findall(line):
            yield word.lower(), 1

    def combiner(self, key, counts):
        yield key, sum(counts)

    def reducer(self, key, counts):
        yield key, [sum(counts), platform.python_implementation()]


if __name__ == "__main__":
    MRWordsAndPython.run()
"""


def pypy() -> str:
    """Debian's pypy3 with its venv module, which the machine must have."""
    found = shutil.which("pypy3")
    if found and subprocess.run([found, "-c", "import venv, ensurepip"], capture_output=True,
                                timeout=60).returncode == 0:
        return found
    raise AssertionError("this test needs PyPy: apt-get install pypy3 pypy3-venv")


def pypy_version() -> str:
    return subprocess.run([pypy(), "-c", "import sys; print(sys.version.split()[0])"], capture_output=True,
                          text=True, timeout=60).stdout.strip()


class Head:
    """A head set up once for the module: its HOME (host keys, cluster key), workers.cfg and project."""

    def __init__(self, kind: str, folder: Path, workers_cfg: str, project: Path) -> None:
        self.kind, self.folder, self.workers_cfg, self.project = kind, folder, workers_cfg, project
        self.home = folder / "home"
        (self.home / ".ssh").mkdir(mode=0o700, parents=True)

    def context(self, monkeypatch):
        """Be this head in a test: its HOME and workers.cfg; a Context for its project."""
        monkeypatch.setenv("HOME", str(self.home))
        Path("workers.cfg").write_text(self.workers_cfg)
        return make_context(project=self.project)


def make_project(folder: Path) -> Path:
    for name, text in PROJECT.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(textwrap.dedent(text))
    return folder


@pytest.fixture(scope="module", params=["ssh", "local"])
def head(request, tmp_path_factory):
    """Two PyPy workers, SSH (a PyPy venv each) or local (``python = pypy3``), set up once for the module."""
    folder = tmp_path_factory.mktemp(f"pypy-{request.param}")
    project = make_project(folder / "project")
    if request.param == "ssh":
        cluster = request.getfixturevalue("sshd_cluster")
        for daemon in cluster.daemons:
            if daemon.process is None:
                daemon.start()
        made = Head("ssh", folder, cluster.workers_cfg(cluster.homes, count=2, python=pypy()), project)
        (made.home / ".ssh" / "known_hosts").write_text(cluster.known_hosts())
    else:
        made = Head("local", folder, "".join(f"[local-{i}]\nlocal = yes\nhome = {folder / f'local-{i}'}\n"
                                             f"python = {pypy()}\n" for i in range(2)), project)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.chdir(folder)
        tasks.setup(made.context(monkeypatch))
    return made


@pytest.fixture
def c(head, request, monkeypatch):
    """A Context on the module's PyPy workers; SSH connections closed after the test (the ssh_workers fixture)."""
    if head.kind == "ssh":
        request.getfixturevalue("ssh_workers")
    for name in ("LC_ALL", "LC_CTYPE"):  # the C locale, as in an SSH session without LANG or a bare container
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LANG", "C")
    return head.context(monkeypatch)


def merged(c, source: str, path: Path) -> list:
    tasks.merge(c, source, str(path))
    return [line.split("\t", 1) for line in path.read_text().splitlines()]


def test_setup_makes_each_worker_run_pypy(head, c):
    from reductio.head.cluster import Cluster

    versions = {w.step("prepare", {})["python"] for w in Cluster.from_context(c).workers}
    assert versions == {pypy_version()}
    if head.kind == "ssh":
        venv = Path(Cluster.from_context(c).workers[0].venv)
        assert [path.name for path in (venv / "lib").iterdir()] == [f"pypy{pypy_version().rsplit('.', 1)[0]}"]


def test_a_function_job_with_a_combiner_scatters_and_reduces_on_pypy(head, c, tmp_path, capsys):
    """load -> map (combiner) -> scatter (through the gate, on SSH workers) -> sort -> reduce -> merge; and a
    transform."""
    tasks.load(c, str(write_lines(tmp_path / "text.txt", TEXT)), "f-text")
    tasks.map(c, "pypyjobs.words", "f-text", "f-pairs", combine="reductio.reducers.sum")
    capsys.readouterr()
    tasks.scatter(c, "f-pairs", "f-here")
    if head.kind == "ssh":  # each worker sent its pairs for the other through the other's gate
        assert scatter_connections(capsys.readouterr().out) == {"ssh-0": 1, "ssh-1": 1}
    tasks.sort(c, "f-here", "f-sorted")
    tasks.reduce(c, "pypyjobs.total", "f-sorted", "f-counts")
    expected = {key: f"{count} PyPy" for key, count in (WORDS + Counter({"python:PyPy": len(TEXT)})).items()}
    assert dict(merged(c, "f-counts", tmp_path / "counts.tsv")) == expected
    tasks.transform(c, "pypyjobs.lower_words", "f-text", "f-lowered")
    got = Counter("\t".join(row) for row in merged(c, "f-lowered", tmp_path / "lowered.tsv"))
    lowered = Counter(f"{word.lower()}\t1" for line in TEXT for word in line.split())
    assert got == lowered + Counter({"read by PyPy": len(TEXT)})


def scatter_connections(report: str) -> dict:
    """Connections per worker, from the table a scatter step prints."""
    lines = report.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["worker"] and "connections" in line)
    end = lines[header].index("connections") + len("connections")  # figures stand right-aligned under it
    return {line.split()[0]: int(line[:end].split()[-1]) for line in lines[header + 1:]
            if line.startswith("  ") and line.split()[0] != "total"}


def test_a_streaming_job_runs_its_python_commands_on_pypy(c, tmp_path):
    """A Python mapper command, a Python combiner function over its output, a Python reducer command."""
    scripts = [str(write_lines(tmp_path / "mapper.py", MAPPER.splitlines())),
               str(write_lines(tmp_path / "reducer.py", REDUCER.splitlines()))]
    tasks.load(c, str(write_lines(tmp_path / INPUT, TEXT)), "s-text")
    tasks.map(c, "| python3 mapper.py", "s-text", "s-pairs", combine="reductio.reducers.sum", files=scripts)
    tasks.scatter(c, "s-pairs", "s-here")
    tasks.sort(c, "s-here", "s-sorted")
    tasks.reduce(c, "| python3 reducer.py", "s-sorted", "s-counts", files=scripts)
    runs = Counter({"python:PyPy": len(TEXT), f"file:{INPUT}": len(TEXT)})
    expected = {key: f"{count} PyPy" for key, count in (WORDS + runs).items()}
    assert dict(merged(c, "s-counts", tmp_path / "counts.tsv")) == expected


def test_a_job_with_files_archives_and_env_runs_on_pypy(c, tmp_path):
    """A Python mapper command reading a tar.gz and a zip archive, and a shell combiner command: a map-only job."""
    model = tmp_path / "model.tar.gz"
    classes = "".join(f"w{i} {'even' if i % 2 == 0 else 'odd'}\n" for i in range(30))
    with tarfile.open(model, "w:gz") as tar:
        info = tarfile.TarInfo("classes.txt")
        info.size = len(classes.encode())
        tar.addfile(info, io.BytesIO(classes.encode()))
    with zipfile.ZipFile(tmp_path / "stop.zip", "w") as archive:
        archive.writestr("words.txt", "w0 w1 it's\n")
    tasks.load(c, str(write_lines(tmp_path / "text.txt", TEXT)), "a-text")
    tasks.map(c, "| python3 lookup.py", "a-text", "a-pairs", combine=SUM_BY_KEY,
              files=[str(write_lines(tmp_path / "lookup.py", LOOKUP.splitlines()))],
              archives=[f"{model}#model", f"{tmp_path / 'stop.zip'}#stop"], env=["MIN_LENGTH=3"])
    known = dict(line.split() for line in classes.splitlines())
    expected = Counter()
    for word, n in WORDS.items():
        if word not in {"w0", "w1", "it's"} and len(word) >= 3:
            expected[known.get(word, "other")] += n
    got = Counter()
    for key, count in merged(c, "a-pairs", tmp_path / "counts.tsv"):  # each worker's sums
        got[key] += int(count)
    assert got.pop("python:PyPy") >= 2  # a line per run of the mapper: one per worker at least, and none other
    assert got == expected


def test_an_mrjob_job_runs_its_tasks_on_pypy(c, tmp_path):
    script = write_lines(tmp_path / "mr_words_and_python.py", MRJOB_SCRIPT.splitlines())
    text = write_lines(tmp_path / INPUT, TEXT)
    tasks.mrjob(c, f"{script} {text}", output=str(tmp_path / "out"))
    got = {json.loads(key): json.loads(value) for part in sorted((tmp_path / "out").glob("part-*"))
           for key, value in (line.split("\t") for line in part.read_text().splitlines())}
    expected = Counter(word.lower() for line in TEXT for word in re.findall(r"[\w']+", line))
    expected.update({"python:PyPy": len(TEXT), f"file:{INPUT}": len(TEXT)})
    assert got == {key: [n, "PyPy"] for key, n in expected.items()}


def test_a_worker_set_up_on_cpython_then_set_to_pypy_gets_a_pypy_environment_and_its_code_again(
        ssh_workers, sshd_cluster, tmp_path, capsys):
    """``python = pypy3`` added to a worker that setup already gave a CPython environment: the next setup says so
    and makes it anew with PyPy, and installs the project in it again; a setup after that keeps it."""
    ssh_workers(1)
    cpython_cfg = sshd_cluster.workers_cfg(sshd_cluster.shared("python-switch"), count=1)
    project = make_project(tmp_path / "project")
    Path("workers.cfg").write_text(cpython_cfg)
    tasks.setup(make_context(project=project))
    Path("workers.cfg").write_text(cpython_cfg.rstrip("\n") + f"\npython = {pypy()}\n")
    capsys.readouterr()
    c = make_context(project=project)
    tasks.setup(c)
    said = capsys.readouterr().out
    assert f"setup: ssh-0: its environment was made by python3, not {pypy()}: made anew" in said, said
    from reductio.head.cluster import Cluster

    assert Cluster.from_context(c).workers[0].step("prepare", {})["python"] == pypy_version()
    tasks.load(c, str(write_lines(tmp_path / "text.txt", TEXT)), "switch-text")
    tasks.map(c, "pypyjobs.words", "switch-text", "switch-words")
    counts = Counter()
    for key, value in merged(c, "switch-words", tmp_path / "words.tsv"):
        counts[key] += int(value)
    assert counts == WORDS + Counter({"python:PyPy": len(TEXT)})
    tasks.setup(c)
    assert "made anew" not in capsys.readouterr().out
