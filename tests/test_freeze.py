"""A worker host that freezes (SIGSTOP: a swapping box, a wedged sshd, a paused VM) is lost like a cut one.

A frozen host's kernel still acknowledges every packet, so TCP never gives
up on it: only the head's own clock of each connection can tell. These tests
run two SSH workers on loopback sshds under Fabric's own Config (which every
connection of a run shares, as the reductio program builds them), freeze
part of one worker's process tree while the other stays chatty, and check
that the step stops within dead_after (or stuck_after) and a few seconds,
naming the frozen worker.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Dict, List

import pytest
from invoke import Exit

from conftest import Background, end_run, fabric_context, write_lines
from netns import wait_until
from reductio import tasks

DEAD_AFTER = 3.0
WITHIN = DEAD_AFTER + 8  # seconds from the freeze to the head's exit


def tree(root: int) -> Dict[int, str]:
    """pid -> command line of ``root`` and every process below it, read from /proc."""
    parents, commands = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            commands[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8",
                                                                                                    "replace")
        except OSError:  # it ended meanwhile
            continue
        parents[int(entry.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
    found, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in commands:
            found[pid] = commands[pid]
            todo += [child for child, parent in parents.items() if parent == pid]
    return found


def is_sshd(command: str) -> bool:
    return command.startswith(("sshd", "/usr/sbin/sshd"))


class Freezer:
    """Stops part of one sshd's process tree with SIGSTOP, and lets every process it stopped go again."""

    def __init__(self, daemon) -> None:
        self.daemon = daemon
        self.stopped: List[int] = []

    def running(self, word: str) -> bool:
        return any(word in command for command in tree(self.daemon.process.pid).values())

    def freeze(self, which) -> List[str]:
        frozen = []
        for pid, command in tree(self.daemon.process.pid).items():
            if which(command):
                try:
                    os.kill(pid, signal.SIGSTOP)
                except ProcessLookupError:  # it ended meanwhile (a login shell's short-lived child)
                    continue
                self.stopped.append(pid)
                frozen.append(command)
        return frozen

    def thaw(self) -> None:
        for pid in self.stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


@pytest.fixture
def frozen_job(ssh_workers, sshd_cluster, tmp_path):
    """Two set-up SSH workers whose connections were opened ssh-0 first, then ssh-1; a loaded input; a freezer
    for ssh-0 that thaws whatever it stopped at the end."""
    ssh_workers(2)
    c = fabric_context(dead_after=DEAD_AFTER, progress_interval=0.5)
    tasks.setup(c)
    end_run(c)
    ssh_workers(1)
    tasks.status(c)  # ssh-0's connection first ...
    ssh_workers(2)
    data = write_lines(tmp_path / "in.txt", [f"k{i}\tv" for i in range(60_000)])
    tasks.load(c, str(data), "input")  # ... then ssh-1's: the one opened last
    freezer = Freezer(sshd_cluster.daemons[0])
    yield c, freezer
    freezer.thaw()
    end_run(c)


def freeze_mid_map(c, freezer, which, capsys) -> str:
    """Freeze ``which`` of ssh-0's processes once its map runs; the error message, checked to come in time."""
    run = Background(lambda: tasks.map(c, "wordjobs.slow_identity", "input", "mapped"))
    wait_until(lambda: freezer.running("reductio.worker map"), 60, "the map to run on ssh-0", every=0.01)
    frozen = freezer.freeze(which)
    assert frozen, "nothing was frozen"
    froze = time.monotonic()
    run.join(WITHIN + 20)
    assert not run.is_alive(), f"the head still runs {WITHIN + 20:g} s after ssh-0 was frozen ({frozen})"
    assert isinstance(run.error, Exit) and run.error.code == 1, run.error
    assert run.ended - froze <= WITHIN, f"the head took {run.ended - froze:.1f} s to give ssh-0 up"
    message = run.error.message
    assert "ssh-0" in message and "lost" in message and "ssh-1 (" not in message, message
    assert "retrying" not in capsys.readouterr().err
    return message


def test_a_host_whose_sshd_froze_is_lost_within_dead_after_while_another_stays_chatty(frozen_job, capsys):
    c, freezer = frozen_job
    message = freeze_mid_map(c, freezer, is_sshd, capsys)
    assert "dead_after" in message, message  # the watchdog, or the kernel (TCP_USER_TIMEOUT) just before it


def test_a_host_frozen_whole_is_lost_within_dead_after(frozen_job, capsys):
    c, freezer = frozen_job
    message = freeze_mid_map(c, freezer, lambda command: True, capsys)
    assert "dead_after" in message, message  # the watchdog, or the kernel (TCP_USER_TIMEOUT) just before it


def test_a_worker_process_stopped_while_its_sshd_answers_is_lost_as_stuck_after_stuck_after(frozen_job, capsys):
    _, freezer = frozen_job
    c = fabric_context(dead_after=DEAD_AFTER, progress_interval=0.5, stuck_after=6)
    capsys.readouterr()
    run = Background(lambda: tasks.map(c, "wordjobs.slow_identity", "input", "mapped"))
    wait_until(lambda: freezer.running("reductio.worker map"), 60, "the map to run on ssh-0", every=0.01)
    assert freezer.freeze(lambda command: not is_sshd(command))
    froze = time.monotonic()
    run.join(6 + 8 + 20)
    assert not run.is_alive(), "the head still runs 34 s after ssh-0's worker processes were stopped"
    assert isinstance(run.error, Exit) and run.error.code == 1, run.error
    assert run.ended - froze <= 6 + 8, f"the head took {run.ended - froze:.1f} s to give ssh-0 up"
    assert run.ended - froze >= 6 - 1.5, "lost before stuck_after although its host still answered"
    message = run.error.message
    assert "ssh-0" in message and "(stuck_after)" in message and "ssh-1 (" not in message, message
    progress = [line for line in capsys.readouterr().err.splitlines() if "ssh-0: no report for" in line]
    assert any("its host answers; stuck_after 6 s" in line for line in progress), progress
