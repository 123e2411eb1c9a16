"""The guarantees in README.rst, each against real processes: nothing lost, nothing half-done."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from invoke import Exit

from conftest import (
    WORDJOBS,
    Background,
    end_run,
    make_context,
    processes_named,
    processes_with,
    reductio_program,
    write_lines,
)
from oracles import count_table, gathered, merged_lines, records, word_pairs
from reductio import tasks

REPO = Path(__file__).resolve().parent.parent


def wait_for(path: Path, timeout: float = 60) -> Path:
    deadline = time.time() + timeout
    while not path.exists():
        if time.time() > deadline:
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.02)
    return path  # the writer renames it into place whole


def worker_homes(root: Path):
    return sorted(p for p in root.iterdir() if p.is_dir())


def local_homes() -> list:
    return worker_homes(Path(os.environ["HOME"]) / ".reductio" / "local")


def pause_input(tmp_path: Path, pause: Path, lines: int = 3000) -> Path:
    return write_lines(tmp_path / "input.txt", [f"k{i}\tv{i}" for i in range(lines)] + [f"pause\t{pause}"])


def assert_not_published(homes, name: str):
    for home in homes:
        assert not (home / "data" / name).exists(), f"{name} published on {home.name}"
        assert list((home / "tmp").iterdir()) == [], f"leftovers in {home.name}/tmp"


def kill_when_paused(pause: Path) -> int:
    pid = int(wait_for(Path(str(pause) + ".reached")).read_text())
    os.kill(pid, signal.SIGKILL)
    return pid


@pytest.fixture(params=["local", "ssh"])
def cluster(request, tmp_path):
    """A set-up context, its worker homes, and where a pause file goes that its workers can see and mark: two
    local workers, or two SSH workers (another account as root: not in the test's own private tmp_path)."""
    if request.param == "local":
        c = make_context(2)
        tasks.setup(c)
        return c, local_homes, tmp_path / "pause"
    configure = request.getfixturevalue("ssh_workers")
    sshd = request.getfixturevalue("sshd_cluster")
    configure(2)
    c = make_context(project=WORDJOBS, retries=0)
    tasks.setup(c)
    return c, lambda: [sshd.homes / "ssh-0", sshd.homes / "ssh-1"], sshd.shared(tmp_path.name) / "pause"


def test_killing_a_mapper_mid_step_publishes_nothing_and_a_rerun_matches_a_clean_run(cluster, tmp_path):
    c, homes, pause = cluster
    source = pause_input(tmp_path, pause)
    tasks.load(c, str(source), "input")
    tasks.map(c, "wordjobs.pausing", "input", "clean")
    tasks.merge(c, "clean", str(tmp_path / "clean.tsv"))

    pause.touch()
    run = Background(lambda: tasks.map(c, "wordjobs.pausing", "input", "mapped"))
    kill_when_paused(pause)
    run.join(60)
    assert isinstance(run.error, Exit) and run.error.code == 1
    assert "killed" in run.error.message
    assert_not_published(homes(), "mapped")

    pause.unlink()
    tasks.map(c, "wordjobs.pausing", "input", "mapped")
    tasks.merge(c, "mapped", str(tmp_path / "mapped.tsv"))
    assert (tmp_path / "mapped.tsv").read_bytes() == (tmp_path / "clean.tsv").read_bytes()
    assert merged_lines(tmp_path / "mapped.tsv") == Counter(source.read_text().splitlines())  # each line, once
    assert_not_published(homes(), "no-such-dataset")  # and tmp/ is empty again after success


def test_killing_a_reducer_mid_step_keeps_the_old_target_and_a_rerun_matches(cluster, tmp_path):
    c, homes, pause = cluster
    source = pause_input(tmp_path, pause)
    tasks.load(c, str(source), "input")
    tasks.map(c, "wordjobs.identity", "input", "pairs")
    tasks.scatter(c, "pairs", "here")
    tasks.sort(c, "here", "sorted")
    tasks.reduce(c, "wordjobs.pausing_count", "sorted", "counted")
    tasks.merge(c, "counted", str(tmp_path / "clean.tsv"))
    before = {home.name: os.readlink(home / "data" / "counted") for home in homes()}

    pause.touch()
    run = Background(lambda: tasks.reduce(c, "wordjobs.pausing_count", "sorted", "counted", force=True))
    kill_when_paused(pause)
    run.join(60)
    assert isinstance(run.error, Exit) and "killed" in run.error.message
    assert {home.name: os.readlink(home / "data" / "counted") for home in homes()} == before

    pause.unlink()
    tasks.reduce(c, "wordjobs.pausing_count", "sorted", "counted", force=True)
    tasks.merge(c, "counted", str(tmp_path / "again.tsv"))
    assert (tmp_path / "again.tsv").read_bytes() == (tmp_path / "clean.tsv").read_bytes()
    keys = Counter(key for key, _ in records(source.read_text().splitlines()))
    assert merged_lines(tmp_path / "again.tsv") == count_table(keys)  # pausing_count: each key's values, counted


def test_killing_a_scatter_sender_publishes_nothing_and_a_rerun_matches(cluster, tmp_path):
    c, homes, _ = cluster
    lines = [f"key{i:07d}\t{'v' * 200}" for i in range(60000)]
    tasks.load(c, str(write_lines(tmp_path / "big.txt", lines)), "input")
    tasks.map(c, "wordjobs.identity", "input", "pairs")
    tasks.scatter(c, "pairs", "clean")
    tasks.merge(c, "clean", str(tmp_path / "clean.tsv"))

    killed = []
    run = Background(lambda: tasks.scatter(c, "pairs", "moved"))
    deadline = time.time() + 60
    while run.is_alive() and not killed and time.time() < deadline:
        for pid in _pids_running("reductio.worker send"):
            os.kill(pid, signal.SIGSTOP)  # freeze it wherever it is, then kill it there
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        time.sleep(0.002)
    run.join(60)
    assert killed, "never caught a sender running"
    assert isinstance(run.error, Exit) and run.error.code == 1
    assert_not_published(homes(), "moved")

    tasks.scatter(c, "pairs", "moved")
    tasks.merge(c, "moved", str(tmp_path / "moved.tsv"))
    assert (tmp_path / "moved.tsv").read_bytes() == (tmp_path / "clean.tsv").read_bytes()
    assert len((tmp_path / "moved.tsv").read_text().splitlines()) == len(lines)
    assert merged_lines(tmp_path / "moved.tsv") == Counter(lines)


def _pids_running(text: str) -> list:
    return [pid for pid, command in processes_with(text).items()
            if "bash -c" not in command and "/bin/sh" not in command]


def test_interrupting_the_head_during_a_step_then_rerunning_gives_identical_output(tmp_path, isolated_home):
    pause = tmp_path / "pause"
    data = pause_input(tmp_path, pause)
    env = dict(os.environ, HOME=str(isolated_home))
    job = reductio_program("-f", str(WORDJOBS / "fabfile.py"), "setup", "pausejob", "--path", str(data))
    clean = subprocess.run(job + ["--output", str(tmp_path / "clean.tsv")], env=env, capture_output=True, text=True,
                           timeout=300)
    assert clean.returncode == 0, clean.stderr

    pause.touch()
    head = subprocess.Popen(job + ["--output", str(tmp_path / "out.tsv"), "--prefix", "b"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    wait_for(Path(str(pause) + ".reached"))
    os.killpg(head.pid, signal.SIGINT)  # Ctrl-C: the whole foreground group
    head.communicate(timeout=60)
    assert head.returncode != 0
    assert not (tmp_path / "out.tsv").exists()

    pause.unlink()
    again = subprocess.run(job + ["--output", str(tmp_path / "out.tsv"), "--prefix", "b"], env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "load: b-input is up to date; skipped" in again.stdout
    assert (tmp_path / "out.tsv").read_bytes() == (tmp_path / "clean.tsv").read_bytes()
    assert merged_lines(tmp_path / "out.tsv") == gathered(data.read_text().splitlines())
    for home in local_homes():
        assert list((home / "tmp").iterdir()) == []


@pytest.mark.parametrize("program", ["sort", "ssh"])
def test_a_head_killed_mid_job_leaves_no_worker_command_nor_its_sort_or_ssh_running(
        program, ssh_workers, tmp_path, isolated_home):
    """Guarantee 3: worker commands stop when the head goes away, with every process they started (``sort``,
    the scatter sender's ``ssh``). The head is killed while one of those runs on an SSH worker."""
    ssh_workers(2)
    data = write_lines(tmp_path / "in.txt", [f"w{i % 5000} x{i % 77} y{i}" for i in range(200_000)])
    head = subprocess.Popen(reductio_program("-f", str(WORDJOBS / "fabfile.py"), "setup", "wordcount", "--path",
                                             str(data), "--output", str(tmp_path / "out.tsv")),
                            env=dict(os.environ, HOME=str(isolated_home)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        deadline, seen = time.monotonic() + 240, {}
        while not seen and head.poll() is None and time.monotonic() < deadline:
            seen = processes_named(program)
            time.sleep(0.005)
        head.kill()
        assert seen, f"never saw a worker's {program} running; the head's exit code: {head.poll()}"
    finally:
        head.kill()
        head.communicate(timeout=60)
    deadline = time.monotonic() + 40  # EOF on their stdin at once; dead_after (30 s) at the latest
    left = True
    while left and time.monotonic() < deadline:
        left = {**processes_named("sort", "ssh"), **processes_with("reductio.worker"),
                **processes_with("reductio.gate")}
        time.sleep(0.1)
    assert not left, f"still running 40 s after the head died: {left}"
    assert not (tmp_path / "out.tsv").exists()


def test_a_rerun_skips_steps_whose_targets_are_up_to_date_and_force_redoes_them(tmp_path, capsys):
    c = make_context(2)
    tasks.setup(c)
    data = write_lines(tmp_path / "in.txt", ["a b", "b c"])
    tasks.load(c, str(data), "text")
    tasks.map(c, "wordjobs.words", "text", "pairs")
    versions = {home.name: os.readlink(home / "data" / "pairs") for home in local_homes()}
    capsys.readouterr()
    tasks.load(c, str(data), "text")
    tasks.map(c, "wordjobs.words", "text", "pairs")
    out = capsys.readouterr().out
    assert "load: text is up to date; skipped" in out
    assert "map: pairs is up to date from text; skipped" in out
    assert {home.name: os.readlink(home / "data" / "pairs") for home in local_homes()} == versions
    tasks.map(c, "wordjobs.words", "text", "pairs", force=True)
    assert {home.name: os.readlink(home / "data" / "pairs") for home in local_homes()} != versions
    tasks.merge(c, "pairs", str(tmp_path / "pairs.tsv"))
    assert merged_lines(tmp_path / "pairs.tsv") == word_pairs(data.read_text().splitlines())


def test_merge_is_skipped_while_the_file_holds_that_version_of_the_dataset_untouched(tmp_path, capsys):
    c = make_context(2)
    tasks.setup(c)
    tasks.load(c, str(write_lines(tmp_path / "in.txt", ["b\t2", "a\t1"])), "text")
    out = tmp_path / "out" / "merged.tsv"
    tasks.merge(c, "text", str(out))
    made = out.stat()
    capsys.readouterr()
    tasks.merge(c, "text", str(out))
    assert f"merge: {out} is up to date from text; skipped" in capsys.readouterr().out
    assert out.stat().st_mtime_ns == made.st_mtime_ns and out.read_text() == "a\t1\nb\t2\n"
    out.write_text("edited by hand\n")  # a changed file is merged again
    tasks.merge(c, "text", str(out))
    assert "up to date" not in capsys.readouterr().out and out.read_text() == "a\t1\nb\t2\n"
    tasks.load(c, str(tmp_path / "in.txt"), "text", force=True)  # a new version of the dataset
    tasks.merge(c, "text", str(out))
    assert "up to date" not in capsys.readouterr().out
    tasks.merge(c, "text", str(out), force=True)
    assert "up to date" not in capsys.readouterr().out
    out.unlink()
    tasks.merge(c, "text", str(out))
    assert out.read_text() == "a\t1\nb\t2\n"


def test_merge_refuses_a_planted_link_and_leaves_its_target_alone(tmp_path):
    c = make_context(2)
    tasks.setup(c)
    tasks.load(c, str(write_lines(tmp_path / "in.txt", ["a\t1"])), "text")
    victim = write_lines(tmp_path / "victim", ["precious"])
    victim.chmod(0o644)
    (tmp_path / "counts.tsv").symlink_to(victim)
    with pytest.raises(Exit) as failure:
        tasks.merge(c, "text", str(tmp_path / "counts.tsv"))
    assert "is a symbolic link" in failure.value.message
    assert victim.read_text() == "precious\n" and (tmp_path / "counts.tsv").is_symlink()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".reductio-merge")] == []


def test_a_merged_file_is_private_unless_it_replaces_one_with_its_own_mode(tmp_path):
    c = make_context(2)
    tasks.setup(c)
    tasks.load(c, str(write_lines(tmp_path / "in.txt", ["a\t1"])), "text")
    new, shared = tmp_path / "new.tsv", write_lines(tmp_path / "shared.tsv", ["old"])
    shared.chmod(0o640)
    old_umask = os.umask(0o022)
    try:
        tasks.merge(c, "text", str(new))
        tasks.merge(c, "text", str(shared))
    finally:
        os.umask(old_umask)
    assert new.stat().st_mode & 0o777 == 0o600
    assert shared.stat().st_mode & 0o777 == 0o640 and shared.read_text() == "a\t1\n"


@pytest.mark.parametrize("damage, seen_by_the_head", [
    (lambda data: data[:-5], "the worker's marker says"),
    (lambda data: data[:10] + b"X" + data[11:], "does not match the SHA-256 the worker sent it with"),
], ids=["truncated", "a byte changed"])
@pytest.mark.parametrize("sort_first", [False, True], ids=["files merged", "one sorted file"])
def test_merge_writes_nothing_when_a_workers_part_does_not_match_its_marker(tmp_path, damage, seen_by_the_head,
                                                                            sort_first):
    """A part that needs sort -m is checked file by file on the worker; one sorted file is checked by the head
    against the marker's own SHA-256, which the worker sends with it."""
    c = make_context(2)
    tasks.setup(c)
    (tmp_path / "in").mkdir()
    for name in ["one", "two"]:
        write_lines(tmp_path / "in" / f"{name}.txt", [f"k{i}\t{name}" for i in range(100)])
    tasks.load(c, str(tmp_path / "in"), "text")  # a shard per input file
    dataset = "text"
    if sort_first:
        tasks.sort(c, "text", "sorted")
        dataset = "sorted"
    data = next(path for path in (local_homes()[0] / "data" / dataset).resolve().iterdir() if path.name[0] != "_")
    data.write_bytes(damage(data.read_bytes()))  # the disk damaged a file after it was published
    with pytest.raises(Exit) as failure:
        tasks.merge(c, dataset, str(tmp_path / "out.tsv"))
    message = failure.value.message
    assert "local-0" in message, message
    if sort_first:
        assert seen_by_the_head in message, message
    else:
        assert "does not match its marker's SHA-256; the dataset is damaged" in message
    assert not (tmp_path / "out.tsv").exists()


def test_a_changed_input_file_or_mapper_module_redoes_the_step(tmp_path, capsys):
    project = tmp_path / "proj"
    project.mkdir()
    module = project / "jobmod.py"
    module.write_text("def tag(key, value):\n    yield key, 'one'\n")
    c = make_context(2, project=project)
    tasks.setup(c)
    data = write_lines(tmp_path / "in.txt", ["x", "y"])
    tasks.load(c, str(data), "text")
    tasks.map(c, "jobmod.tag", "text", "tagged")
    module.write_text("def tag(key, value):\n    yield key, 'two'\n")
    capsys.readouterr()
    tasks.map(c, "jobmod.tag", "text", "tagged")
    assert "skipped" not in capsys.readouterr().out
    tasks.merge(c, "tagged", str(tmp_path / "out.tsv"))
    assert (tmp_path / "out.tsv").read_text() == "x\ttwo\ny\ttwo\n"
    write_lines(data, ["x", "y", "z"])
    tasks.load(c, str(data), "text")
    assert "load: text is up to date" not in capsys.readouterr().out


def test_a_dataset_without_its_marker_is_refused_never_read(tmp_path):
    c = make_context(2)
    tasks.setup(c)
    tasks.load(c, str(write_lines(tmp_path / "in.txt", ["a\t1", "b\t2"])), "text")
    (local_homes()[1] / "data" / "text" / "_SUCCESS").unlink()
    with pytest.raises(Exit) as failure:
        tasks.map(c, "wordjobs.identity", "text", "out")
    assert "local-1" in failure.value.message
    assert "has no _SUCCESS marker" in failure.value.message


def test_a_dataset_whose_workers_hold_different_versions_is_refused(tmp_path):
    c = make_context(2)
    tasks.setup(c)
    tasks.load(c, str(write_lines(tmp_path / "in.txt", ["a\t1", "b\t2"])), "text")
    marker = local_homes()[0] / "data" / "text" / "_SUCCESS"
    facts = json.loads(marker.read_text())
    facts["attempt"] = "20000101T000000-00000000"
    marker.write_text(json.dumps(facts))
    with pytest.raises(Exit) as failure:
        tasks.map(c, "wordjobs.identity", "text", "out")
    assert "differs between workers" in failure.value.message


def test_an_unreachable_worker_is_retried_and_the_step_succeeds_when_it_returns(ssh_workers, sshd_cluster, tmp_path):
    ssh_workers(2)
    c = make_context(project=WORDJOBS, retries=4, retry_delay=0.5)
    tasks.setup(c)
    tasks.load(c, str(write_lines(tmp_path / "in.txt", [f"k{i}\tv" for i in range(100)])), "input")
    end_run(c)
    daemon = sshd_cluster.daemons[1]
    daemon.stop()
    messages = []

    def start_once_retried():  # the head's own word that it retries, not a timer, brings the worker back
        deadline = time.monotonic() + 60
        while not any("ssh-1" in m and "retrying in" in m for m in list(messages)) and time.monotonic() < deadline:
            time.sleep(0.02)
        daemon.start()

    restart = threading.Thread(target=start_once_retried)
    restart.start()
    original = sys.stderr
    try:
        sys.stderr = _Tee(original, messages)
        tasks.map(c, "wordjobs.identity", "input", "mapped")
    finally:
        sys.stderr = original
        restart.join(70)
    assert any("ssh-1" in m and "retrying in" in m for m in messages)
    assert (sshd_cluster.homes / "ssh-1" / "data" / "mapped" / "_SUCCESS").exists()
    tasks.merge(c, "mapped", str(tmp_path / "mapped.tsv"))
    assert merged_lines(tmp_path / "mapped.tsv") == Counter((tmp_path / "in.txt").read_text().splitlines())


class _Tee:
    def __init__(self, stream, lines):
        self.stream, self.lines = stream, lines

    def write(self, text):
        self.lines.append(text)
        return self.stream.write(text)

    def flush(self):
        self.stream.flush()


def test_a_user_error_is_never_retried(ssh_workers, sshd_cluster, tmp_path, capsys):
    ssh_workers(2)
    c = make_context(project=WORDJOBS, retries=3, retry_delay=5)
    tasks.setup(c)
    tasks.load(c, str(write_lines(tmp_path / "in.txt", ["boom\tx"] * 10)), "booms")
    started = time.time()
    with pytest.raises(Exit) as failure:
        tasks.map(c, "wordjobs.raises_on_boom", "booms", "out")
    assert "no booms allowed" in failure.value.message
    assert time.time() - started < 5
    assert "retrying" not in capsys.readouterr().err


def test_homes_and_data_files_are_private_to_their_owner(tmp_path):
    c = make_context(1)
    tasks.setup(c)
    tasks.load(c, str(write_lines(tmp_path / "in.txt", ["a\t1"])), "text")
    tasks.map(c, "wordjobs.identity", "text", "pairs")
    (home,) = local_homes()
    assert home.stat().st_mode & 0o777 == 0o700
    for path in (home / "data" / "pairs").resolve().iterdir():
        assert path.stat().st_mode & 0o077 == 0, f"{path.name} is readable by others"


def test_delete_refuses_a_dataset_link_pointing_outside_the_home(tmp_path):
    c = make_context(1)
    tasks.setup(c)
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    (home,) = local_homes()
    os.symlink(outside, home / "data" / "evil")
    with pytest.raises(Exit) as failure:
        tasks.delete(c, "evil")
    assert "outside the reductio home" in failure.value.message
    assert (outside / "keep.txt").read_text() == "mine"


def test_a_ten_megabyte_line_goes_through_load_map_sort_reduce_and_merge_whole(tmp_path):
    big = "v" * (10 * 1024 * 1024)
    data = write_lines(tmp_path / "in.txt", ["small\tx", f"big\t{big}", "tiny\ty"])
    c = make_context(2)
    tasks.setup(c)
    tasks.load(c, str(data), "input")
    tasks.map(c, "wordjobs.identity", "input", "pairs")
    tasks.scatter(c, "pairs", "here")
    tasks.sort(c, "here", "sorted")
    tasks.reduce(c, "wordjobs.first_value", "sorted", "firsts")
    tasks.merge(c, "firsts", str(tmp_path / "out.tsv"))
    assert (tmp_path / "out.tsv").read_text() == f"big\t{big}\nsmall\tx\ntiny\ty\n"
