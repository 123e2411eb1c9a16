"""A worker's disk that fills during any step: one line saying so (which worker, which disk, what to do), nothing
published, and the step run again once there is room gives the exact answer."""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from invoke import Exit

from conftest import WORDJOBS, make_context, skip_unless_root, still_running, write_lines
from reductio import tasks

LINES = [f"w{i % 301:03d}\t{'v' * 40}{i}" for i in range(40_000)]  # about 2 MB
ROOM = 256 << 10  # bytes left free on the small disk when the step starts: far less than any step writes there


@contextlib.contextmanager
def tmpfs(mount: Path, size: str):
    """A tmpfs of ``size`` at ``mount``, unmounted at the end (mounting needs root: the CI runs as root)."""
    skip_unless_root("mounting a small tmpfs to fill")
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True,
                             timeout=60)
    assert mounted.returncode == 0, f"this test mounts a small tmpfs and needs root: {mounted.stderr!r}"
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True, timeout=60)


@pytest.fixture
def small_disk(tmp_path):
    with tmpfs(tmp_path / "small", "16m") as mount:
        yield mount


class Filler:
    """Fill a disk to ``ROOM`` bytes free, and empty it again."""

    def __init__(self, mount: Path) -> None:
        self.path = mount / "filler"

    def fill(self, room: int = ROOM) -> None:
        stat = os.statvfs(self.path.parent)
        with open(self.path, "ab") as filler:
            filler.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - room))

    def empty(self) -> None:
        self.path.unlink()


def cluster(tmp_path: Path, mount: Path, project: Path = WORDJOBS):
    """Two local workers: ``small`` with its home on the small disk, ``roomy`` on the test's own."""
    small = f"[small]\nlocal = yes\nhome = {mount / 'home'}\n"
    roomy = f"[roomy]\nlocal = yes\nhome = {tmp_path / 'roomy'}\n"
    Path("workers.cfg").write_text(f"{small}\n{roomy}")
    c = make_context(project=project, retries=0)
    tasks.setup(c)
    return c


def assert_full_disk_said(failure, mount: Path, worker: str = "small"):
    """One line of the failure says ``worker``'s disk is full: the worker failing, or the one a sender wrote to."""
    said = one_line_saying(failure, "the disk is full")
    assert said.startswith(f"  {worker}: ") or f": sending to {worker} failed: " in said, said
    assert f"mounted at {mount}, which holds {mount}" in said and "free space there" in said, said


def one_line_saying(failure, words: str) -> str:
    message = failure.value.message
    assert "Traceback" not in message, message
    said = [line for line in message.splitlines() if words in line]
    assert len(said) == 1, message
    return said[0]


def assert_nothing_left(mount: Path, tmp_path: Path, name: str):
    assert_left_nothing((mount / "home", tmp_path / "roomy"), name)


def assert_left_nothing(homes, name: str):
    for home in homes:
        assert not (home / "data" / name).exists(), f"{name} published in {home}"
        assert [p.name for p in (home / "tmp").iterdir()] == [], f"leftovers in {home}/tmp"


def merged(c, name: str, tmp_path: Path) -> list:
    out = tmp_path / f"{name}.tsv"
    tasks.merge(c, name, str(out))
    return out.read_text().splitlines()


def pairs(lines) -> collections.Counter:
    return collections.Counter(lines)


# scatter: the other worker's sender writes into the small worker's home (a local destination); the SSH test has
# the gate receive it.
@pytest.mark.parametrize("step", ["load", "map", "transform", "scatter", "sort", "reduce"])
def test_a_disk_that_fills_during_a_step_says_so_and_a_rerun_is_exact(step, tmp_path, small_disk):
    c = cluster(tmp_path, small_disk)
    filler = Filler(small_disk)
    source = write_lines(tmp_path / "in.txt", LINES)
    wanted = pairs(LINES)
    run = {
        "load": lambda: tasks.load(c, str(source), "target"),
        "map": lambda: tasks.map(c, "wordjobs.identity", "input", "target"),
        "transform": lambda: tasks.transform(c, "wordjobs.split_words", "input", "target"),
        "scatter": lambda: tasks.scatter(c, "pairs", "target"),
        "sort": lambda: tasks.sort(c, "here", "target"),
        "reduce": lambda: tasks.reduce(c, "wordjobs.gather", "sorted", "target"),
    }[step]
    if step != "load":
        tasks.load(c, str(source), "input")
    if step not in ("load", "map", "transform"):
        tasks.map(c, "wordjobs.identity", "input", "pairs")
    if step in ("sort", "reduce"):
        tasks.scatter(c, "pairs", "here")
    if step == "reduce":
        tasks.sort(c, "here", "sorted")
    if step == "transform":
        wanted = pairs(f"{word}\t1" for line in LINES for word in line.split())
        wanted.update(f"raw:{line}" for line in LINES)
    if step == "reduce":
        values = collections.defaultdict(list)
        for line in LINES:
            key, value = line.split("\t")
            values[key].append(value)
        wanted = pairs(f"{key}\t{len(got)}\t" + "\t".join(sorted(got)) for key, got in values.items())
    filler.fill()
    with pytest.raises(Exit) as failure:
        run()
    assert_full_disk_said(failure, small_disk)
    assert_nothing_left(small_disk, tmp_path, "target")
    assert still_running("reductio.worker", 10) == {}, "the other worker's part of the step was left running"
    filler.empty()
    run()
    assert pairs(merged(c, "target", tmp_path)) == wanted


def test_a_full_disk_is_a_clear_error_and_earlier_datasets_stay_intact(tmp_path, small_disk):
    workers = [{"name": "small", "local": "yes", "home": str(small_disk / "home")}]
    c = make_context(1, workers=workers)
    tasks.setup(c)
    lines = [f"k{i}\tv" for i in range(10)]
    tasks.load(c, str(write_lines(tmp_path / "in.txt", lines)), "input")
    Filler(small_disk).fill(3 << 20)
    with pytest.raises(Exit) as failure:
        tasks.map(c, "wordjobs.big_output", "input", "huge")
    assert "no space left on the device" in failure.value.message
    assert "Traceback" not in failure.value.message
    assert not (small_disk / "home" / "data" / "huge").exists()
    assert list((small_disk / "home" / "tmp").iterdir()) == []
    tasks.map(c, "wordjobs.identity", "input", "small-output")
    tasks.merge(c, "input", str(tmp_path / "input.tsv"))
    assert len((tmp_path / "input.tsv").read_text().splitlines()) == 10
    assert pairs(merged(c, "input", tmp_path)) == pairs(merged(c, "small-output", tmp_path)) == pairs(lines)



def test_a_disk_that_fills_during_initialize_says_so_and_a_rerun_is_exact(tmp_path, small_disk):
    project = tmp_path / "project"
    project.mkdir()
    (project / "generating.py").write_text(
        "def many(out):\n    for i in range(40_000):\n        out.write_pair(f'w{i % 301:03d}', 'v' * 40 + str(i))\n")
    c = cluster(tmp_path, small_disk, project=project)
    filler = Filler(small_disk)
    filler.fill()
    with pytest.raises(Exit) as failure:
        tasks.initialize(c, "generating.many", "target")
    assert_full_disk_said(failure, small_disk)
    assert_nothing_left(small_disk, tmp_path, "target")
    filler.empty()
    tasks.initialize(c, "generating.many", "target")
    assert pairs(merged(c, "target", tmp_path)) == pairs(LINES)


def test_a_disk_that_fills_while_files_are_pushed_says_so_and_a_rerun_is_exact(tmp_path, small_disk):
    c = cluster(tmp_path, small_disk)
    tasks.load(c, str(write_lines(tmp_path / "in.txt", LINES)), "input")
    model = tmp_path / "model.bin"
    model.write_bytes(os.urandom(1 << 20))
    run = lambda: tasks.map(c, "| cat", "input", "target", files=[str(model)])  # noqa: E731
    filler = Filler(small_disk)
    filler.fill()
    with pytest.raises(Exit) as failure:
        run()
    assert_full_disk_said(failure, small_disk)
    assert "copying model.bin to the worker failed" in failure.value.message
    assert_nothing_left(small_disk, tmp_path, "target")
    assert [p.name for p in (small_disk / "home" / "shipped").iterdir()] == []
    filler.empty()
    run()
    assert pairs(merged(c, "target", tmp_path)) == pairs(LINES)


def test_the_heads_disk_that_fills_during_merge_says_so_and_a_rerun_is_exact(tmp_path, small_disk):
    c = cluster(tmp_path, small_disk)
    tasks.load(c, str(write_lines(tmp_path / "in.txt", LINES)), "input")
    out = small_disk / "merged" / "out.tsv"
    filler = Filler(small_disk)
    filler.fill()
    with pytest.raises(Exit) as failure:
        tasks.merge(c, "input", str(out))
    message = failure.value.message
    assert "Traceback" not in message and "\n" not in message, message
    assert f"the head's disk is full: no space left on the device mounted at {small_disk}" in message, message
    assert not out.exists() and list(out.parent.iterdir()) == []
    filler.empty()
    tasks.merge(c, "input", str(out))
    assert out.read_text().splitlines() == sorted(LINES, key=lambda line: (line.split("\t")[0], line))


def test_an_ssh_workers_disk_that_fills_says_so_at_distribute_scatter_and_sort(ssh_workers, sshd_cluster, tmp_path):
    """ssh-0's home on a small disk: its receive (through the gate), its sort and the sdist pushed to it."""
    with tmpfs(sshd_cluster.shared(tmp_path.name) / "small", "96m") as mount:  # where the workers' account reaches
        sshd_cluster.give(mount)
        ssh_workers(2)
        cfg = Path("workers.cfg")
        small_home = f"home = {mount / 'home'}\n"
        cfg.write_text(cfg.read_text().replace(f"home = {sshd_cluster.homes / 'ssh-0'}\n", small_home))
        project = tmp_path / "wordjobs"
        shutil.copytree(WORDJOBS, project, ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"))
        c = make_context(project=project, retries=0)
        tasks.setup(c)
        tasks.load(c, str(write_lines(tmp_path / "in.txt", LINES)), "input")
        tasks.map(c, "wordjobs.identity", "input", "pairs")
        filler = Filler(mount)
        homes = (mount / "home", sshd_cluster.homes / "ssh-1")

        filler.fill()
        with pytest.raises(Exit) as failure:
            tasks.scatter(c, "pairs", "here")
        said = one_line_saying(failure, "the disk is full")
        assert said.startswith("  ssh-1: sending to ssh-0 (") and "cannot receive: the disk is full" in said, said
        assert "free space there" in said, said
        assert_left_nothing(homes, "here")
        filler.empty()
        tasks.scatter(c, "pairs", "here")

        filler.fill()
        with pytest.raises(Exit) as failure:
            tasks.sort(c, "here", "sorted")
        said = one_line_saying(failure, "the disk is full")
        assert said.startswith(f"  ssh-0: the disk is full: no space left on the device mounted at {mount}"), said
        assert_left_nothing(homes, "sorted")
        filler.empty()
        tasks.sort(c, "here", "sorted")
        assert merged(c, "sorted", tmp_path) == sorted(LINES, key=lambda line: (line.split("\t")[0], line))

        with open(project / "wordjobs" / "__init__.py", "a") as changed:
            changed.write("\n# changed: distribute pushes a new sdist\n")
        filler.fill(0)
        with pytest.raises(Exit) as failure:
            tasks.distribute(c)
        said = one_line_saying(failure, "the disk is full")
        assert said.startswith("  ssh-0: copying wordjobs-") and "to the worker failed: the disk is full" in said, said
        assert f"on the device holding {mount / 'home'}" in said, said
        filler.empty()
        tasks.distribute(c)
        tasks.map(c, "wordjobs.identity", "input", "again")
        assert pairs(merged(c, "again", tmp_path)) == pairs(LINES)

