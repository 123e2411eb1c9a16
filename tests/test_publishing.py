"""Never a wrong answer with exit 0: a dataset knows its cluster, a step reads the version it checked, and a
publish is all-or-nothing across workers (issue 27, items 2-4)."""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from invoke import Exit
from test_pushes import children

from conftest import WORDJOBS, Background, make_context, reductio_program, write_lines
from netns import wait_until
from ownership import command_line, held_paths, holds, processes_with
from reductio import tasks
from reductio.worker.store import Home, file_facts
from test_freeze import tree

# A user's project with the faults these tests need, each written as user code could.
PROJECT = '''
import json, os, sys, time
from pathlib import Path


def identity(key, value):
    yield key, value


def holding(key, value):
    """identity; on key "hold", whose value names a file: say so, then wait (60 s at most) for FILE.go."""
    if key == "hold":
        Path(value + ".reached").touch()
        deadline = time.time() + 60
        while not os.path.exists(value + ".go") and time.time() < deadline:
            time.sleep(0.02)
    yield key, value


def passing(line, out):
    """A transform: every raw line as it came."""
    out.write(line)


def each(key, values):
    """A reducer: every value back under its key."""
    for value in values:
        yield key, value


def _params():
    """The step's home, attempt and origin, from the attempt folder this worker process holds open (its
    parameters came on stdin, which the step has read; held_paths, below, is the suite's own)."""
    for target in held_paths():
        parent, attempt = os.path.split(target)
        if os.path.basename(parent) == "tmp" and "-" in attempt and "." not in attempt:
            home = os.path.dirname(parent)
            index = int(os.path.basename(home).rsplit("-", 1)[1])
            return {"home": home, "attempt": attempt, "origin": f"w{index:05d}"}
    raise RuntimeError("this process holds no attempt folder")


def stray_on_second(key, value):
    """identity; on the second worker, a file of its own lands in the step's attempt folder."""
    params = _params()
    if params["origin"] == "w00001":
        Path(params["home"], "tmp", params["attempt"], "stray").write_text("x")
    yield key, value


def blocks_switch_on_second(key, value):
    """identity; on the second worker, a folder sits where publishing keeps the version it replaces."""
    params = _params()
    if params["origin"] == "w00001":
        Path(params["home"], "data", ".out." + params["attempt"] + ".kept").mkdir(exist_ok=True)
    yield key, value


def fails_on_boom(key, value):
    if key == "boom":
        raise ValueError("no booms")
    yield key, value
'''


@pytest.fixture
def project(tmp_path) -> Path:
    folder = tmp_path / "proj"
    folder.mkdir()
    (folder / "faults.py").write_text(PROJECT + "\n\n" + inspect.getsource(held_paths))  # the suite's own reader
    return folder


def homes() -> list:
    root = Path(os.environ["HOME"]) / ".reductio" / "local"
    return sorted(p for p in root.iterdir() if p.is_dir())


def linked(home: Path, name: str):
    link = home / "data" / name
    return os.readlink(link) if link.is_symlink() else None


def leftovers(home: Path) -> list:
    """Hidden links in data (prepared, kept) and store folders nothing links: what a finished publish leaves."""
    data = home / "data"
    hidden = [entry for entry in os.listdir(data) if entry.startswith(".")]
    used = {os.path.basename(os.readlink(data / entry)) for entry in os.listdir(data) if (data / entry).is_symlink()}
    return hidden + sorted(set(os.listdir(home / "store")) - used)


def merged(c, dataset: str) -> Counter:
    """The lines ``merge`` writes of ``dataset``, counted: what a test compares with its own oracle."""
    out = Path(f"{dataset}.merged.tsv")
    tasks.merge(c, dataset, str(out))
    return Counter(out.read_text().splitlines())


def words_file(tmp_path: Path, count: int = 3000) -> Path:
    return write_lines(tmp_path / "words.txt", [f"w{i % 977}\t{i}" for i in range(count)])


def one_line(message: str) -> str:
    assert "\n" not in message.strip(), message
    return message


# -- a dataset knows the cluster it was made on ------------------------------------------------------------


def test_a_cluster_that_shrank_refuses_every_step_reading_a_dataset_made_on_the_larger_one(tmp_path):
    two = make_context(2)
    tasks.setup(two)
    tasks.load(two, str(words_file(tmp_path)), "input")
    tasks.map(two, "wordjobs.identity", "input", "pairs")
    tasks.sort(two, "pairs", "sorted")
    tasks.reduce(two, "wordjobs.total", "sorted", "counts")

    one = make_context(1)
    tasks.setup(one)
    out = tmp_path / "out.tsv"
    for run in (lambda: tasks.merge(one, "counts", str(out)),
                lambda: tasks.map(one, "wordjobs.identity", "input", "again"),
                lambda: tasks.transform(one, "wordjobs.split_words", "input", "again"),
                lambda: tasks.sort(one, "pairs", "again"),
                lambda: tasks.reduce(one, "wordjobs.total", "sorted", "again"),
                lambda: tasks.scatter(one, "pairs", "again")):
        with pytest.raises(Exit) as refused:
            run()
        message = one_line(refused.value.message)
        assert "was made on 2 worker(s) (local-0, local-1), the cluster now has 1 worker(s) (local-0)" in message
        assert "load or initialize" in message
    assert not out.exists()
    assert linked(homes()[0], "again") is None


def test_a_cluster_that_grew_refuses_a_dataset_made_on_the_smaller_one_naming_both(tmp_path):
    two = make_context(2)
    tasks.setup(two)
    tasks.load(two, str(words_file(tmp_path)), "input")
    tasks.map(two, "wordjobs.identity", "input", "pairs")
    three = make_context(3)
    tasks.setup(three)
    with pytest.raises(Exit) as refused:
        tasks.merge(three, "pairs", str(tmp_path / "out.tsv"))
    assert "was made on 2 worker(s) (local-0, local-1), the cluster now has 3 worker(s)" in one_line(
        refused.value.message)
    with pytest.raises(Exit) as refused:
        tasks.reduce(three, "wordjobs.total", "pairs", "counts")
    assert "load or initialize" in refused.value.message


def test_an_ssh_cluster_that_shrank_or_grew_refuses_a_dataset_made_on_the_other(ssh_workers, tmp_path):
    ssh_workers(2)
    c = make_context(project=WORDJOBS)
    tasks.setup(c)
    tasks.load(c, str(words_file(tmp_path)), "shape-input")
    tasks.map(c, "wordjobs.identity", "shape-input", "shape-pairs")
    for count in (1, 3):
        ssh_workers(count)
        c = make_context(project=WORDJOBS)
        if count > 2:
            tasks.setup(c)  # the new worker's home
        with pytest.raises(Exit) as refused:
            tasks.merge(c, "shape-pairs", str(tmp_path / "out.tsv"))
        assert "was made on 2 worker(s) (ssh-0, ssh-1), the cluster now has" in one_line(refused.value.message)
        with pytest.raises(Exit) as refused:
            tasks.scatter(c, "shape-pairs", "shape-here")
        assert f"the cluster now has {count} worker(s)" in refused.value.message
    assert not (tmp_path / "out.tsv").exists()


def test_status_marks_a_dataset_made_on_another_cluster(tmp_path, capsys):
    two = make_context(2)
    tasks.setup(two)
    tasks.load(two, str(words_file(tmp_path)), "input")
    one = make_context(1)
    capsys.readouterr()
    tasks.status(one)
    rows = capsys.readouterr().out.splitlines()
    assert rows[1].split()[:3] == ["local-0", "input", "OTHER-CLUSTER"], rows


# -- a step reads exactly the version it checked -------------------------------------------------------------


def test_a_source_reloaded_while_a_map_reads_it_is_never_mixed_into_the_target(tmp_path, project):
    c = make_context(2, project=project, processes=1)
    tasks.setup(c)
    hold = tmp_path / "hold"
    folder = tmp_path / "inputs"
    folder.mkdir()
    first = [f"hold\t{hold}"] + [f"a{i}\told" for i in range(2000)]
    second = [f"b{i}\told" for i in range(2000)]
    write_lines(folder / "a.txt", first)
    write_lines(folder / "b.txt", second)
    tasks.load(c, str(folder), "input")

    mapping = Background(lambda: tasks.map(c, "faults.holding", "input", "pairs"))
    deadline = 60
    while not Path(str(hold) + ".reached").exists():
        assert mapping.is_alive() and deadline > 0, mapping.error
        mapping.join(0.05)
        deadline -= 0.05
    write_lines(folder / "a.txt", [f"a{i}\tnew" for i in range(2000)])  # the second head reloads the source
    write_lines(folder / "b.txt", [f"b{i}\tnew" for i in range(2000)])
    tasks.load(make_context(2, project=project), str(folder), "input")
    Path(str(hold) + ".go").touch()
    mapping.join(90)
    assert not mapping.is_alive()

    if mapping.error is None:  # published: then wholly the version it checked
        assert merged(c, "pairs") == Counter(first + second)
    else:
        assert "changed" in str(mapping.error) and "run" in str(mapping.error)
    assert not [line for line in merged(c, "input") if line.endswith("\told")]
    tasks.map(c, "faults.identity", "input", "later")  # the next publish cleans the version the map held
    for home in homes():
        assert leftovers(home) == [], home


# What each reading step reads, how a head makes that source, and the step; each step's output is its input's lines.
READERS = {
    "map": ("input", lambda c: tasks.map(c, "faults.identity", "input", "out")),
    "transform": ("input", lambda c: tasks.transform(c, "faults.passing", "input", "out")),
    "sort": ("pairs", lambda c: tasks.sort(c, "pairs", "out")),
    "scatter": ("pairs", lambda c: tasks.scatter(c, "pairs", "out")),
    "reduce": ("sorted", lambda c: tasks.reduce(c, "faults.each", "sorted", "out")),
}


def _make_source(c, folder: Path, version: str, source: str) -> list:
    """Load two files of ``version``'s lines, and map and sort them as far as ``source``; the lines."""
    lines = {name: [f"k{i % 97}\t{version}{name}{i}" for i in range(3000)] for name in ("a", "b")}
    for name, part in lines.items():
        write_lines(folder / f"{name}.txt", part)
    tasks.load(c, str(folder), "input")
    if source in ("pairs", "sorted"):
        tasks.map(c, "faults.identity", "input", "pairs")
    if source == "sorted":
        tasks.sort(c, "pairs", "sorted")
    return lines["a"] + lines["b"]


def _readers(process: str, source: str, found: dict) -> dict:
    """Add to ``found`` (home -> pid) each worker's ``process`` of this run once it holds a version of ``source``
    open, pausing it (SIGSTOP) at once: a paused reader is one no head can publish past."""
    for pid in children(os.getpid()):  # local workers' commands are this process's own children: a quick look
        try:
            command = command_line(Path(f"/proc/{pid}"))
        except OSError:  # it ended meanwhile
            continue
        for home in homes():
            if (home not in found and f"reductio.worker {process}" in command and not command.startswith("/bin/sh")
                    and holds(pid, f"{home}/store/{source}.")):
                os.kill(pid, signal.SIGSTOP)
                found[home] = pid
    return found


@pytest.mark.parametrize("step", sorted(READERS))
def test_a_source_republished_while_a_step_reads_it_is_not_seen_or_stops_the_step(tmp_path, project, step):
    source, run = READERS[step]
    c = make_context(2, project=project, processes=1, dead_after=120)
    tasks.setup(c)
    folder = tmp_path / "inputs"
    folder.mkdir()
    old = _make_source(c, folder, "old", source)

    reading = Background(lambda: run(c))
    paused = {}
    try:
        process = "send" if step == "scatter" else step
        wait_until(lambda: len(_readers(process, source, paused)) == 2 or not reading.is_alive(), 60,
                   f"each worker's {process} to hold {source!r}")
        assert reading.is_alive(), f"{step} ended before both workers read {source!r}: {reading.error}"
        new = _make_source(make_context(2, project=project), folder, "new", source)  # the second head
    finally:
        for pid in paused.values():
            os.kill(pid, signal.SIGCONT)
    reading.join(120)
    assert not reading.is_alive(), f"{step} still runs 120 s after its readers went on"

    if reading.error is None:  # published: then wholly the version it read
        assert merged(c, "out") == Counter(old)
    else:
        message = one_line(str(reading.error))
        assert "changed" in message or "replaced" in message, message
        assert "run" in message and "differs between workers" not in message, message
    assert merged(c, source) == Counter(new)


def test_a_source_republished_after_one_sender_took_it_and_before_the_other_did_stops_scatter_saying_so(
        tmp_path, project):
    c = make_context(2, project=project, processes=1, dead_after=120)
    tasks.setup(c)
    folder = tmp_path / "inputs"
    folder.mkdir()
    old = _make_source(c, folder, "old", "pairs")
    scattering = Background(lambda: tasks.scatter(c, "pairs", "out"))
    senders = []

    def pause_senders() -> bool:
        for pid, command in processes_with("reductio.worker send").items():
            if pid not in senders and not command.startswith("/bin/sh"):
                os.kill(pid, signal.SIGSTOP)
                senders.append(pid)
        return len(senders) == 2 or not scattering.is_alive()

    def took(pid: int) -> bool:
        return any(holds(pid, f"{home}/store/pairs.") for home in homes())

    try:
        wait_until(pause_senders, 60, "both workers' senders to start", every=0.002)
        assert scattering.is_alive(), scattering.error
        assert not any(took(pid) for pid in senders), "caught the senders after they took the source"
        early, late = senders
        os.kill(early, signal.SIGCONT)
        wait_until(lambda: took(early), 60, "the first sender to take the source")
        os.kill(early, signal.SIGSTOP)
        new = _make_source(make_context(2, project=project), folder, "new", "pairs")  # the second head
    finally:
        for pid in senders:
            os.kill(pid, signal.SIGCONT)
    scattering.join(120)
    assert not scattering.is_alive(), "scatter still runs 120 s after its senders went on"
    # the late sender looks for the version the survey saw, which nothing held on its worker: gone, and it says so
    assert isinstance(scattering.error, Exit), scattering.error
    message = scattering.error.message
    assert "dataset 'pairs' was replaced after this step looked at it" in message, message
    assert "run the step again" in message and "differs between workers" not in message, message
    assert "out" not in [name for home in homes() for name in os.listdir(home / "data")]
    assert merged(c, "pairs") == Counter(new) != Counter(old)


# -- publishing is all-or-nothing across workers ----------------------------------------------------------


def _publish_old_out(tmp_path, project):
    c = make_context(2, project=project, processes=1)
    tasks.setup(c)
    lines = [f"k{i}\tv{i}" for i in range(3000)]
    tasks.load(c, str(write_lines(tmp_path / "in.txt", lines)), "input")
    tasks.map(c, "faults.identity", "input", "out")
    return c, lines, [linked(home, "out") for home in homes()]


def _assert_old_out_everywhere(c, lines, before):
    assert [linked(home, "out") for home in homes()] == before
    for home in homes():
        assert leftovers(home) == [], home
        assert list((home / "tmp").iterdir()) == [], home
    assert merged(c, "out") == Counter(lines)


def test_a_worker_refusing_to_publish_leaves_every_worker_on_the_old_version(tmp_path, project):
    c, lines, before = _publish_old_out(tmp_path, project)
    with pytest.raises(Exit) as refused:
        tasks.map(c, "faults.stray_on_second", "input", "out")
    assert "unexpected ['stray']" in refused.value.message
    _assert_old_out_everywhere(c, lines, before)


def test_a_switch_failing_on_one_worker_is_undone_on_the_others(tmp_path, project):
    c, lines, before = _publish_old_out(tmp_path, project)
    with pytest.raises(Exit) as refused:
        tasks.map(c, "faults.blocks_switch_on_second", "input", "out")
    assert "cannot switch 'out'" in refused.value.message
    for home in homes():  # the folder the test's user code planted
        for entry in (home / "data").iterdir():
            if entry.is_dir() and not entry.is_symlink():
                entry.rmdir()
    _assert_old_out_everywhere(c, lines, before)


def _half_published(tmp_path, switched: int, prepared: int):
    """What a head killed while publishing leaves: a new version of "input" prepared on the first ``prepared``
    workers, switched to on the first ``switched``."""
    c = make_context(2)
    tasks.setup(c)
    old = [f"k{i}\told" for i in range(3000)]
    tasks.load(c, str(write_lines(tmp_path / "in.txt", old)), "input")
    new = {}
    for index, root in enumerate(homes()[:prepared]):
        home = Home(root)
        marker = home.marker("input")
        staged = home.tmp / "20991231T000000-feedf00d"
        staged.mkdir()
        files = {}
        for name in marker["files"]:
            data = (home.data / "input" / name).read_bytes().replace(b"\told", b"\tnew")
            (staged / name).write_bytes(data)
            files[name] = file_facts(staged / name)
            new[root.name] = new.get(root.name, b"") + data
        facts = {key: value for key, value in marker.items() if key not in ("files", "attempt", "dataset")}
        home.prepare_version(staged.name, "input", files, facts)
        if index < switched:
            home.switch(staged.name, "input")
    return c, old


def test_the_next_run_completes_a_publish_a_killed_head_left_half_switched(tmp_path):
    c, old = _half_published(tmp_path, switched=1, prepared=2)
    assert merged(c, "input") == Counter(line.replace("old", "new") for line in old)
    assert {linked(home, "input") for home in homes()} == {"../store/input.20991231T000000-feedf00d"}
    for home in homes():
        assert leftovers(home) == [], home


def test_the_next_run_completes_a_first_publish_left_on_one_worker_only(tmp_path):
    c = make_context(2)
    tasks.setup(c)
    lines = {}
    for index, root in enumerate(homes()):
        home = Home(root)
        staged = home.tmp / "20991231T000000-0000cafe"
        staged.mkdir()
        lines[index] = [f"k{index}.{i}\tv" for i in range(100)]
        write_lines(staged / "s00000.load", lines[index])
        files = {"s00000.load": file_facts(staged / "s00000.load")}
        facts = {"step": "load", "format": "text", "partitions": None, "cluster": ["local-0", "local-1"]}
        home.prepare_version(staged.name, "input", files, facts)
        if index == 0:
            home.switch(staged.name, "input")
    assert merged(c, "input") == Counter(lines[0] + lines[1])
    for home in homes():
        assert leftovers(home) == [], home


def test_the_next_run_undoes_a_half_switch_that_cannot_be_completed(tmp_path):
    c, old = _half_published(tmp_path, switched=1, prepared=1)
    assert merged(c, "input") == Counter(old)
    for home in homes():
        assert leftovers(home) == [], home


def test_a_version_prepared_everywhere_but_switched_nowhere_stays_unseen(tmp_path):
    c, old = _half_published(tmp_path, switched=0, prepared=2)
    assert merged(c, "input") == Counter(old)


def test_the_version_a_publish_replaced_stays_until_every_worker_switched_then_goes(tmp_path):
    c, old = _half_published(tmp_path, switched=1, prepared=2)
    first = homes()[0]
    kept = [entry for entry in os.listdir(first / "data") if entry.endswith(".kept")]
    assert len(kept) == 1
    assert (first / "data" / os.readlink(first / "data" / kept[0])).is_dir()  # the old version, still there
    tasks.status(c)
    tasks.merge(c, "input", str(tmp_path / "out.tsv"))
    assert [len(os.listdir(home / "store")) for home in homes()] == [1, 1]


# -- a real head killed at each moment of publishing -----------------------------------------------------------


# The local workers' python (workers.cfg's ``python``): a publish move waits at this gate, as FOLDER/PID.waiting, until
# the test lets it go (FOLDER/PID.go; a minute at most); then it is the interpreter the suite runs on.
GATED_PYTHON = """#!/bin/sh
if [ "$2 $3" = "reductio.worker publish" ]; then
    touch "{folder}/$$.waiting"
    i=0
    while [ ! -e "{folder}/$$.go" ] && [ $i -lt 12000 ]; do sleep 0.005; i=$((i + 1)); done
    [ -e "{folder}/$$.go" ] || exit 1
fi
exec {python} "$@"
"""


class Moves:
    """The moves of a publish that a head runs as commands of their own (load's: one per worker and move), each
    held at the workers' gated python (GATED_PYTHON) so that the test lets them go one at a time."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.done = folder, set()

    def waiting(self) -> list:
        return sorted(int(path.stem) for path in self.folder.glob("*.waiting") if int(path.stem) not in self.done)

    def let_one_go(self, head: subprocess.Popen, what: str) -> None:
        """Let the next waiting move run to its end (waiting for the head to start one if none waits)."""
        wait_until(lambda: self.waiting() or head.poll() is not None, 60, f"the head's next move ({what})")
        assert self.waiting(), f"the head ended ({head.returncode}) before {what}: {head.stderr.read()[-2000:]}"
        pid = self.waiting()[0]
        self.done.add(pid)
        (self.folder / f"{pid}.go").touch()
        wait_until(lambda: _ended(pid), 60, f"publish move {pid} to end")

    def end(self) -> None:
        """The head is dead: the moves it started that never ran go too, as they were (SIGKILL)."""
        for pid in self.waiting():
            os.kill(pid, signal.SIGKILL)


def _ended(pid: int) -> bool:
    """Whether ``pid`` exited (gone, or a zombie its parent has not reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] in "ZX"
    except OSError:
        return True


def publishing(home: Path) -> dict:
    """What a home shows of publishing "input": where data/input links, and its hidden links (prepared, kept)."""
    hidden = [entry for entry in os.listdir(home / "data") if entry.startswith(".input.")]
    return {"linked": linked(home, "input"), "pending": [entry for entry in hidden if not entry.endswith(".kept")],
            "kept": [entry for entry in hidden if entry.endswith(".kept")]}


# moment -> (whether every home shows it (``publishing``), given the link published before; the version the next
# run settles on)
KILLED_WHEN = {
    "prepared everywhere, switched nowhere": (
        lambda seen, old: all(home["linked"] == old and home["pending"] for home in seen), "old"),
    "switched on one worker, not the other": (
        lambda seen, old: sorted(home["linked"] == old for home in seen) == [False, True], "new"),
    "switched everywhere, not dropped": (
        lambda seen, old: all(home["linked"] != old and home["kept"] for home in seen), "new"),
}


@pytest.mark.parametrize("moment", list(KILLED_WHEN))
def test_a_head_killed_at_a_moment_of_publishing_leaves_one_version_the_next_run_settles(tmp_path, moment):
    reached, settles_on = KILLED_WHEN[moment]
    gate = tmp_path / "moves"
    gate.mkdir()
    python = tmp_path / "python"
    python.write_text(GATED_PYTHON.format(folder=gate, python=sys.executable))
    python.chmod(0o755)

    def workers_cfg(python: str = None) -> None:
        """The head's cluster, and this process's: the same two local workers (the killed head's, gated)."""
        Path("workers.cfg").write_text("".join(
            f"[local-{i}]\nlocal = yes\nhome = {Path(os.environ['HOME'], '.reductio', 'local', f'worker-{i}')}\n"
            + (f"python = {python}\n" if python else "") for i in range(2)))

    workers_cfg()
    c = make_context(2)
    tasks.setup(c)
    lines = {version: [f"k{i}\t{version}{i}" for i in range(3000)] for version in ("old", "new")}
    source = write_lines(tmp_path / "in.txt", lines["old"])
    tasks.load(c, str(source), "input")
    old = linked(homes()[0], "input")

    write_lines(source, lines["new"])
    workers_cfg(python)
    head = subprocess.Popen(reductio_program("-f", str(WORDJOBS / "fabfile.py"), "load", str(source), "input"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    moves = Moves(gate)
    try:
        seen = []
        for _ in range(6):  # prepare, switch and drop on two workers, one at a time
            seen = [publishing(home) for home in homes()]
            if reached(seen, old):
                break
            moves.let_one_go(head, moment)
        assert reached(seen, old), f"publishing never was {moment}: {seen}"
        head.kill()  # SIGKILL
        head.wait(60)
    finally:
        if head.poll() is None:
            head.kill()
            head.wait(60)
        moves.end()
        head.stderr.close()
        workers_cfg()

    assert merged(c, "input") == Counter(lines[settles_on])  # the next run: one version, never a mix
    assert len({linked(home, "input") for home in homes()}) == 1
    tasks.load(c, str(source), "input")  # and publishing goes on from there
    assert merged(c, "input") == Counter(lines["new"])
    if settles_on == "new":
        for home in homes():
            assert leftovers(home) == [], home


def test_a_head_killed_with_an_ssh_cluster_prepared_everywhere_leaves_the_old_version(
        ssh_workers, sshd_cluster, tmp_path):
    ssh_workers(2)
    c = make_context(project=WORDJOBS)
    tasks.setup(c)
    lines = {version: [f"k{i}\t{version}{i}" for i in range(3000)] for version in ("old", "new")}
    source = write_lines(tmp_path / "in.txt", lines["old"])
    tasks.load(c, str(source), "killed-input")
    roots = [sshd_cluster.homes / f"ssh-{i}" for i in range(2)]
    old = [linked(root, "killed-input") for root in roots]

    def sessions(index: int) -> list:
        return [pid for pid, command in tree(sshd_cluster.daemons[index].process.pid).items()
                if "reductio.worker session" in command and not command.startswith(("/bin/sh", "bash"))]

    def hidden(root: Path) -> set:
        return {entry for entry in os.listdir(root / "data") if entry.startswith(".killed-input.")}

    ours = {pid for index in range(2) for pid in sessions(index)}  # this process's own, from setup and load
    before = [hidden(root) for root in roots]
    write_lines(source, lines["new"])
    head = subprocess.Popen(reductio_program("-f", str(WORDJOBS / "fabfile.py"), "load", str(source),
                                             "killed-input"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    paused = set()
    theirs = {}

    def the_heads_sessions() -> bool:
        """The killed head's own control sessions (where its publish moves will run), one per worker."""
        for index in range(2):
            theirs[index] = [pid for pid in sessions(index) if pid not in ours]
        return all(theirs.values()) or head.poll() is not None

    def pause_the_prepared() -> bool:
        """Pause each worker's session the moment its new version is prepared: only known pids, so it is quick."""
        for index, root in enumerate(roots):
            if index not in paused and hidden(root) - before[index]:
                for pid in theirs[index]:
                    os.kill(pid, signal.SIGSTOP)
                paused.add(index)
        return len(paused) == len(roots) or head.poll() is not None

    try:
        wait_until(the_heads_sessions, 120, "the head's control session on each SSH worker")
        wait_until(pause_the_prepared, 120, "a new version prepared on both SSH workers", every=0.0005)
        assert head.poll() is None, f"the head ended first: {head.stderr.read()[-2000:]}"
        assert [linked(root, "killed-input") for root in roots] == old  # switched nowhere
        head.kill()
        head.wait(60)
    finally:
        if head.poll() is None:
            head.kill()
            head.wait(60)
        for pid in [pid for index in paused for pid in theirs[index]]:
            os.kill(pid, signal.SIGKILL)  # with their head: the moves it sent never ran
        head.stderr.close()
    assert merged(c, "killed-input") == Counter(lines["old"])
    tasks.load(c, str(source), "killed-input")
    assert merged(c, "killed-input") == Counter(lines["new"])


# -- refusals in one line ------------------------------------------------------------------------------------


def test_scatter_of_a_sorted_dataset_is_refused_in_one_line_saying_what_to_do(tmp_path):
    c = make_context(2)
    tasks.setup(c)
    tasks.load(c, str(words_file(tmp_path)), "input")
    tasks.map(c, "wordjobs.identity", "input", "pairs")
    tasks.sort(c, "pairs", "sorted")
    for source in ("sorted", "input"):
        with pytest.raises(Exit) as refused:
            tasks.scatter(c, source, "moved")
        message = one_line(refused.value.message)
        assert f"dataset {source!r} is not partitioned" in message and "scatter that, then sort" in message


def test_merge_of_whole_files_is_refused_in_one_line(tmp_path):
    c = make_context(2)
    tasks.setup(c)
    tasks.load(c, str(words_file(tmp_path)), "files", whole=True)
    with pytest.raises(Exit) as refused:
        tasks.merge(c, "files", str(tmp_path / "out.tsv"))
    assert "holds whole files (load --whole), which merge cannot read" in one_line(refused.value.message)
    assert not (tmp_path / "out.tsv").exists()


def test_a_map_error_names_the_input_file_and_its_own_line_number(tmp_path, project):
    c = make_context(2, project=project, processes=1)
    tasks.setup(c)
    folder = tmp_path / "inputs"
    folder.mkdir()
    write_lines(folder / "bad.txt", [f"k{i}\t{i}" if i != 2500 else "boom\t2" for i in range(1, 3001)])
    write_lines(folder / "fine.txt", ["a\t1"])
    tasks.load(c, str(folder), "input")
    with pytest.raises(Exit) as failed:
        tasks.map(c, "faults.fails_on_boom", "input", "out")
    assert f"{folder / 'bad.txt'} line 2500 (s00000.load line " in failed.value.message, failed.value.message
    assert "s00000.load line 2500)" not in failed.value.message  # the worker's shard holds every other block
