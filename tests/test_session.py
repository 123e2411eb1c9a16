"""Control sessions: an SSH worker answers checks, publishes and discards in one long-lived command."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
from collections import Counter

from conftest import WORDJOBS, end_run, make_context, processes_with, write_lines
from oracles import count_table, merged_lines, word_counts
from reductio import tasks
from reductio.head import links


def commands_started(caplog) -> Counter:
    """The reductio.worker steps the head started as commands of their own (its debug log names each)."""
    return Counter(record.getMessage().split(" -m reductio.worker ")[1].split()[0]
                   for record in caplog.records if " -m reductio.worker " in record.getMessage())


def kill_all(word: str) -> int:
    """SIGKILL every process of this run whose command line holds ``word``; how many there were."""
    found = processes_with(word)
    for pid in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:  # it ended meanwhile
            pass
    return len(found)


def word_count(c, words) -> None:
    tasks.load(c, str(words), "text")
    tasks.map(c, "wordjobs.words", "text", "pairs")
    tasks.scatter(c, "pairs", "here")
    tasks.sort(c, "here", "sorted")
    tasks.reduce(c, "reductio.reducers.sum", "sorted", "counts")


def test_a_rerun_with_every_step_up_to_date_starts_one_command_per_ssh_worker(ssh_workers, tmp_path, caplog, capsys):
    ssh_workers(2)
    c = make_context(project=WORDJOBS)
    tasks.setup(c)
    words = write_lines(tmp_path / "in.txt", [f"w{i % 97} w{i % 13}" for i in range(5000)])
    word_count(c, words)
    c = make_context(project=WORDJOBS)  # a new head: no connection, no session
    caplog.set_level(logging.DEBUG, logger="reductio")
    capsys.readouterr()
    word_count(c, words)
    assert capsys.readouterr().out.count("is up to date") == 5
    assert commands_started(caplog) == {"session": 2}  # every check was a request to the session
    tasks.merge(c, "counts", str(tmp_path / "counts.tsv"))
    assert merged_lines(tmp_path / "counts.tsv") == count_table(word_counts(words.read_text().splitlines()))


def test_a_step_asks_the_session_for_its_check_and_runs_itself_as_one_command(ssh_workers, tmp_path, caplog):
    ssh_workers(2)
    c = make_context(project=WORDJOBS)
    tasks.setup(c)
    tasks.load(c, str(write_lines(tmp_path / "in.txt", ["a b", "b c", "c d"])), "text")
    caplog.set_level(logging.DEBUG, logger="reductio")
    caplog.clear()
    tasks.map(c, "wordjobs.words", "text", "pairs")
    assert commands_started(caplog) == {"map": 2}  # the session, started by load, answered the checks
    tasks.merge(c, "pairs", str(tmp_path / "pairs.tsv"))
    assert sorted((tmp_path / "pairs.tsv").read_text().split()) == sorted("a 1 b 1 b 1 c 1 c 1 d 1".split())


def test_a_session_that_died_is_replaced_by_commands_of_their_own_and_the_job_goes_on(
        ssh_workers, sshd_cluster, tmp_path, caplog):
    ssh_workers(2)
    c = make_context(project=WORDJOBS)
    tasks.setup(c)
    words = write_lines(tmp_path / "in.txt", [f"w{i % 7}" for i in range(100)])
    tasks.load(c, str(words), "text")
    assert kill_all("reductio.worker session"), "no session process was running"
    caplog.set_level(logging.DEBUG, logger="reductio")
    tasks.map(c, "wordjobs.words", "text", "pairs")
    started = commands_started(caplog)
    # each worker's check ran as a command of its own, or in a new session if the head already knew
    assert started["map"] == 2 and started["check"] + started["session"] == 2, started
    caplog.clear()
    tasks.status(c)
    assert set(commands_started(caplog)) <= {"session"}  # from now on, sessions again
    assert all(control.is_open() for control in links.of(c.config).sessions().values())
    tasks.merge(c, "pairs", str(tmp_path / "pairs.tsv"))
    assert sorted((tmp_path / "pairs.tsv").read_text().split()) == sorted(
        [f"w{i % 7}" for i in range(100)] + ["1"] * 100)


def test_distribute_that_installs_new_code_ends_the_sessions_which_imported_the_old(ssh_workers, tmp_path):
    ssh_workers(2)
    project = tmp_path / "project"
    shutil.copytree(WORDJOBS, project, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    c = make_context(project=project)
    tasks.setup(c)
    tasks.status(c)  # a session on each worker
    first = links.of(c.config).sessions()
    assert len(first) == 2 and all(control.is_open() for control in first.values())
    tasks.distribute(c)  # unchanged: nothing installed, the sessions stay
    assert links.of(c.config).sessions() == first and all(control.is_open() for control in first.values())
    module = project / "wordjobs" / "__init__.py"
    module.write_text(module.read_text() + "\n# a new version\n")
    tasks.distribute(c)
    assert not any(control.is_open() for control in first.values())
    tasks.status(c)
    now = links.of(c.config).sessions().values()
    assert all(control.is_open() and control not in first.values() for control in now)


def test_each_run_owns_its_connections_and_sessions_and_ending_one_leaves_the_other_working(ssh_workers, tmp_path):
    """Two runs in one process (two Configs: two fabfile invocations, two notebooks' jobs) share nothing: each
    task of a run reuses that run's sessions; ending a run ends its sessions alone."""
    ssh_workers(2)
    first = make_context(project=WORDJOBS)
    tasks.setup(first)
    tasks.status(first)
    second = make_context(project=WORDJOBS)
    tasks.status(second)
    ones, twos = links.of(first.config).sessions(), links.of(second.config).sessions()
    assert len(ones) == len(twos) == 2
    assert not set(map(id, ones.values())) & set(map(id, twos.values())), "two runs share a session"
    assert links.of(first.config.clone()).sessions() == {}, "a cloned Config is another run, with none yet"
    end_run(first)
    deadline = time.monotonic() + 10  # the cut connections' readers see the end a moment later
    while any(control.is_open() for control in ones.values()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(control.is_open() for control in ones.values()), "the ended run's sessions still answer"
    tasks.load(second, str(write_lines(tmp_path / "in.txt", ["a\t1", "b\t2"])), "text")
    tasks.merge(second, "text", str(tmp_path / "out.tsv"))
    assert sorted((tmp_path / "out.tsv").read_text().splitlines()) == ["a\t1", "b\t2"]
    assert links.of(second.config).sessions() == twos and all(control.is_open() for control in twos.values())
