"""load and initialize stop within dead_after and a few seconds when a receiving worker is lost.

Their receive streams are opened from the task's own thread; one receiver
is frozen (SIGSTOP) on local workers, where nothing else answers for it, with
a short dead_after: the task must fail naming it, whatever the feed is doing
(an initialize function asleep between its lines, a load blocked writing).
"""

from __future__ import annotations

import os
import signal
import threading
import time

from invoke import Exit

from conftest import Background, make_context, write_lines
from netns import wait_until
from ownership import holds
from reductio import tasks
from reductio.head.cluster import Cluster
from test_freeze import tree

DEAD_AFTER = 2.0
WITHIN = DEAD_AFTER + 8  # seconds from the freeze to the head's exit
RELEASE = threading.Event()  # lets sleepy_generate go on once a test is over


def sleepy_generate(out):
    """An initialize function that writes a line, then sleeps far past dead_after before its next one."""
    out.write_pair("first", "1")
    RELEASE.wait(60)
    out.write_pair("second", "2")


def receivers_of(home: str) -> list:
    """The pids of this test's own receive processes for the worker at ``home`` (not a shell running one): its
    parameters come on stdin, so a receiver is known by the folder it holds open in that home."""
    return [pid for pid, command in tree(os.getpid()).items()
            if "reductio.worker receive" in command and not command.startswith(("/bin/sh", "bash"))
            and holds(pid, os.path.expanduser(home).rstrip("/") + "/")]


def freeze_a_receiver(c, step) -> None:
    """Run ``step``, freeze worker 1's receiver once it runs, and check the step fails in time naming it."""
    tasks.setup(c)
    worker = Cluster.from_context(c).workers[1]
    RELEASE.clear()
    run = Background(step)
    frozen = []
    try:
        frozen = wait_until(lambda: run.is_alive() and receivers_of(worker.home), 60,
                            f"{worker.name}'s receive to run", every=0.005)
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        froze = time.monotonic()
        run.join(WITHIN + 20)
        assert not run.is_alive(), f"the head still runs {WITHIN + 20:g} s after {worker.name}'s receiver froze"
        assert run.ended - froze <= WITHIN, f"the head took {run.ended - froze:.1f} s to give {worker.name} up"
    finally:
        RELEASE.set()
        for pid in frozen:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    assert isinstance(run.error, Exit) and run.error.code == 1, run.error
    message = run.error.message
    assert f"{worker.name}: no word from {worker.name}" in message and "lost" in message, message


def test_initialize_stops_within_dead_after_when_a_receiver_is_lost_while_the_generator_sleeps():
    c = make_context(2, dead_after=DEAD_AFTER, progress_interval=0.5)
    freeze_a_receiver(c, lambda: tasks.initialize(c, "test_spread_loss.sleepy_generate", "generated"))


def test_load_stops_within_dead_after_when_a_receiver_is_lost(tmp_path):
    c = make_context(2, dead_after=DEAD_AFTER, progress_interval=0.5)
    data = write_lines(tmp_path / "in.txt", [f"k{i:07d}\t{'v' * 100}" for i in range(300_000)])
    freeze_a_receiver(c, lambda: tasks.load(c, str(data), "input"))
