"""A head killed while it pushes a file to a worker leaves nothing cut short there, and the re-run is exact.

Each test runs the head as a user does (a subprocess), finds the worker's
receiving process by the part file it writes in this test's own home,
pauses it so the push is surely half done, kills the head (SIGKILL or
SIGINT), lets the receiver see the end of its input, then checks what the
worker kept and runs the step again.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from conftest import still_running, write_lines

HEAD = [sys.executable, "-c", "import sys; from reductio.cli import program; program.run(sys.argv[1:])", "reductio"]
BIG = 40 << 20  # far more than the pipes, the SSH window and the socket buffers hold between head and worker


def reductio(*argv, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([*HEAD, "-f", "fabfile.py", *argv], capture_output=True, text=True, timeout=300)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def random_file(path: Path, size: int = BIG) -> Path:
    with open(path, "wb") as out:
        for _ in range(size >> 20):
            out.write(os.urandom(1 << 20))
    return path


def receiver(folder: Path):
    """(pid, part file) of the process writing a part file in ``folder``, or None."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                for fd in (proc / "fd").iterdir():
                    target = os.readlink(fd)
                    if os.path.dirname(target) == str(folder) and target.endswith(".part"):
                        return int(proc.name), Path(target)
            except OSError:  # it ended, or is not ours to read
                continue
    return None


def wait_for(what: str, probe, within: float = 120):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.02)
    raise AssertionError(f"no {what} within {within} s")


def children(pid: int) -> list:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(child) for child in task.read_text().split()]
        except OSError:
            continue
    return found


def local_receivers(head: int, folder: Path) -> list:
    """The head's children pushing into ``folder`` (the shell, or the Python it became), and theirs."""
    found = []
    for child in children(head):
        try:
            if str(folder) in Path(f"/proc/{child}/cmdline").read_bytes().decode("utf-8", "replace"):
                found += [child, *children(child)]
        except OSError:
            continue
    return found


def kill_head_mid_push(argv, folder: Path, how: int, size: int = BIG, local: bool = False) -> None:
    """Start the head running ``argv``; pause the worker's receiver (a local worker's as soon as it starts, an SSH
    worker's once its part file in ``folder`` holds 1 MB); kill the head with ``how``; then let the receiver run
    on to the end of its input."""
    scratch = Path.cwd().with_name(Path.cwd().name + "-head-tmp")  # a killed head leaves its temp folders: not in /tmp
    scratch.mkdir(exist_ok=True)
    head = subprocess.Popen([*HEAD, "-f", "fabfile.py", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=dict(os.environ, TMPDIR=str(scratch)))
    stopped = []
    try:
        if local:  # a local push is too quick to catch midway: stop it before it gets far
            stopped = wait_for(f"receiver for {folder}", lambda: local_receivers(head.pid, folder), 180)
            for pid in stopped:
                os.kill(pid, signal.SIGSTOP)
            stopped = list(dict.fromkeys(stopped + local_receivers(head.pid, folder)))
            for pid in stopped:
                os.kill(pid, signal.SIGSTOP)
        else:
            pid, part = wait_for(f"part file in {folder}", lambda: receiver(folder), 180)
            wait_for("1 MB pushed", lambda: part.exists() and part.stat().st_size >= 1 << 20)
            os.kill(pid, signal.SIGSTOP)
            stopped = [pid]
        parts = [p.stat().st_size for p in folder.glob("*.part")] if folder.is_dir() else []
        assert all(part < size // 2 for part in parts), "caught the push too late to test anything"
        head.send_signal(how)
        if how == signal.SIGKILL:
            head.wait(60)
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    try:
        head.wait(60)
        assert head.returncode != 0
    finally:
        if head.poll() is None:
            head.kill()
            head.wait(60)
        head.stderr.close()
    # The receiver and the shell around it (which renamed the part file, before) have ended.
    assert not still_running(str(folder), within=60)


def assert_only_whole_files(shipped: Path) -> None:
    """Every file the worker kept under its digest holds exactly the content of that digest."""
    kept = [p for p in shipped.iterdir() if p.is_file() and len(p.name) == 64]
    for path in kept:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name, f"{path.name} kept cut short"


def assert_only_whole_archives(dist: Path) -> None:
    """Every sdist and wheel the worker kept reads to its end."""
    for path in dist.rglob("*"):
        if path.name.endswith(".tar.gz"):
            with tarfile.open(path) as archive:
                for member in archive.getmembers():
                    if member.isfile():
                        archive.extractfile(member).read()
        elif path.suffix == ".whl":
            with zipfile.ZipFile(path) as archive:
                assert archive.testzip() is None


def local_worker(tmp_path) -> Path:
    home = tmp_path / "worker"
    Path("workers.cfg").write_text(f"[local-0]\nlocal = yes\nhome = {home}\n")
    return home


def ssh_worker(ssh_workers, sshd_cluster) -> Path:
    ssh_workers(1)
    return sshd_cluster.homes / "ssh-0"


def step_run_again_is_exact(what: str, expected: str) -> None:
    reductio("map", "| cat >/dev/null; sha256sum " + what, "words", "seen", *shipped_options(what))
    reductio("merge", "seen", "seen.txt")
    assert Path("seen.txt").read_text().split() == [expected, what]


def shipped_options(what: str) -> list:
    return ["--files", "big.bin"] if what == "big.bin" else ["--archives", "model.tar#model"]


def prepare_files_and_archives() -> str:
    Path("fabfile.py").write_text("from reductio.tasks import *\n")
    write_lines(Path("in.txt"), ["a"])
    reductio("setup")
    reductio("load", "in.txt", "words")
    big = random_file(Path("big.bin"))
    with tarfile.open("model.tar", "w") as tar:
        tar.add(big, "big.bin")
        tar.add(write_lines(Path("v.txt"), ["one"]), "v.txt")
    return hashlib.sha256(big.read_bytes()).hexdigest()


def files_and_archives_survive_a_killed_head(home: Path, what: str, how: int, local: bool) -> None:
    expected = prepare_files_and_archives()
    shipped = home / "shipped"
    kill_head_mid_push(["map", "| cat >/dev/null; sha256sum " + what, "words", "seen", *shipped_options(what)],
                       shipped, how, local=local)
    assert_only_whole_files(shipped)
    step_run_again_is_exact(what, expected)
    assert_only_whole_files(shipped)


KILLS = [pytest.param(signal.SIGKILL, id="SIGKILL"), pytest.param(signal.SIGINT, id="SIGINT")]
SHIPPED = [pytest.param("big.bin", id="files"), pytest.param("model/big.bin", id="archives")]


@pytest.mark.parametrize("how", KILLS)
@pytest.mark.parametrize("what", SHIPPED)
def test_a_head_killed_mid_push_to_a_local_worker_leaves_no_file_cut_short_and_the_rerun_is_exact(
        tmp_path, what, how):
    files_and_archives_survive_a_killed_head(local_worker(tmp_path), what, how, local=True)


@pytest.mark.parametrize("how", KILLS)
@pytest.mark.parametrize("what", SHIPPED)
def test_a_head_killed_mid_push_to_an_ssh_worker_leaves_no_file_cut_short_and_the_rerun_is_exact(
        ssh_workers, sshd_cluster, what, how):
    files_and_archives_survive_a_killed_head(ssh_worker(ssh_workers, sshd_cluster), what, how, local=False)


BIGJOB_SETUP = """from setuptools import setup
setup(name="bigjob", version="0.1", packages=["bigjob"], package_data={"bigjob": ["blob.bin"]})
"""
BIGJOB = """import hashlib, importlib.resources

def blob_digest(key, value):
    yield hashlib.sha256((importlib.resources.files(__name__) / "blob.bin").read_bytes()).hexdigest(), "blob"
"""


@pytest.mark.parametrize("how", KILLS)
def test_a_head_killed_mid_push_of_the_projects_sdist_leaves_nothing_cut_short_and_the_rerun_is_exact(
        ssh_workers, sshd_cluster, tmp_path, how):
    home = ssh_worker(ssh_workers, sshd_cluster)
    Path("setup.py").write_text(BIGJOB_SETUP)
    Path("MANIFEST.in").write_text("include bigjob/blob.bin\n")
    Path("bigjob").mkdir()
    Path("bigjob/__init__.py").write_text(BIGJOB)
    blob = random_file(Path("bigjob/blob.bin"), 0)
    Path("fabfile.py").write_text("from reductio.tasks import *\n")
    write_lines(Path("in.txt"), ["a"])
    reductio("setup")  # the reductio sdist, and a first bigjob
    reductio("load", "in.txt", "words")
    random_file(blob, 16 << 20)  # a new bigjob to distribute
    expected = hashlib.sha256(blob.read_bytes()).hexdigest()
    kill_head_mid_push(["distribute"], home / "dist", how, 16 << 20)
    assert_only_whole_archives(home / "dist")
    reductio("distribute")
    reductio("map", "bigjob.blob_digest", "words", "seen")
    reductio("merge", "seen", "seen.txt")
    assert Path("seen.txt").read_text() == f"{expected}\tblob\n"
