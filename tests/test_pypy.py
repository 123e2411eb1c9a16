"""PyPy workers scatter through the gate like CPython ones: Debian's pypy3 and pypy3-venv, real sshd."""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from pathlib import Path

from conftest import WORDJOBS, make_context, write_lines
from reductio import tasks

TEXT = [f"w{i % 37} w{i % 11} pypy{i % 5}" for i in range(2000)]


def pypy() -> str:
    """Debian's pypy3 with its venv module, which the machine must have."""
    found = shutil.which("pypy3")
    if found and subprocess.run([found, "-c", "import venv, ensurepip"], capture_output=True,
                                timeout=60).returncode == 0:
        return found
    raise AssertionError("this test needs PyPy: apt-get install pypy3 pypy3-venv")


def word_count(c, tmp_path: Path) -> Counter:
    """Load, map with a combiner, scatter, sort, reduce and merge; the merged counts."""
    tasks.load(c, str(write_lines(tmp_path / "text.txt", TEXT)), "text")
    tasks.map(c, "wordjobs.words", "text", "pairs", combine="reductio.reducers.sum")
    tasks.scatter(c, "pairs", "here")
    tasks.sort(c, "here", "sorted")
    tasks.reduce(c, "reductio.reducers.sum", "sorted", "counts")
    tasks.merge(c, "counts", str(tmp_path / "counts.tsv"))
    return Counter({key: int(value) for key, value in
                    (line.split("\t") for line in (tmp_path / "counts.tsv").read_text().splitlines())})


def test_ssh_workers_on_pypy_scatter_through_the_gate_end_to_end(ssh_workers, sshd_cluster, tmp_path):
    ssh_workers(2)  # the daemons' host keys in known_hosts; the workers.cfg is ours:
    Path("workers.cfg").write_text(sshd_cluster.workers_cfg(sshd_cluster.homes, count=2, python=pypy()))
    c = make_context(project=WORDJOBS)
    tasks.setup(c)
    assert word_count(c, tmp_path) == Counter(word for line in TEXT for word in line.split())
    venv = sshd_cluster.homes / "ssh-0-pypy3" / "venv"
    assert (venv / "lib" / "pypy3.9").is_dir() or list((venv / "lib").glob("pypy3*")), list((venv / "lib").iterdir())


def test_local_workers_run_the_python_their_config_names(tmp_path):
    Path("workers.cfg").write_text("".join(f"[local-{i}]\nlocal = yes\nhome = {tmp_path / f'local-{i}'}\n"
                                           f"python = {pypy()}\n" for i in range(2)))
    c = make_context(project=WORDJOBS)
    tasks.setup(c)
    from reductio.cluster import Cluster

    versions = {w.step("prepare", {})["python"] for w in Cluster.from_context(c).workers}
    expected = subprocess.run([pypy(), "-c", "import sys; print(sys.version.split()[0])"], capture_output=True,
                              text=True, timeout=60).stdout.strip()
    assert versions == {expected}
    assert word_count(c, tmp_path) == Counter(word for line in TEXT for word in line.split())
