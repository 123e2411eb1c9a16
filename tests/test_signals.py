"""A step's process killed by a signal is reported by that signal's name, on SSH workers as on local ones."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from invoke import Exit

from conftest import WORDJOBS, Background, make_context, write_lines
from reductio import tasks


def paused_pid(pause: Path, timeout: float = 60) -> int:
    """The pid of the mapper that reached the pause (wordjobs._pause_if_asked writes it)."""
    reached = Path(f"{pause}.reached")
    deadline = time.monotonic() + timeout
    while True:
        text = reached.read_text() if reached.exists() else ""
        if text:
            return int(text)
        assert time.monotonic() < deadline, "the mapper never reached the pause"
        time.sleep(0.02)


@pytest.mark.parametrize("sent", [signal.SIGKILL, signal.SIGTERM, signal.SIGSEGV], ids=lambda s: s.name)
@pytest.mark.parametrize("kind", ["ssh", "local"])
def test_a_step_killed_by_a_signal_names_that_signal(kind, sent, tmp_path, request):
    if kind == "ssh":
        request.getfixturevalue("ssh_workers")(1)
        with open("workers.cfg", "a") as cfg:
            cfg.write("processes = 1\n")  # the mapper is the worker command itself, not a share of it
        c = make_context(project=WORDJOBS, retries=0)
        pause = request.getfixturevalue("sshd_cluster").shared(tmp_path.name) / "pause"  # the workers' account's
    else:
        c = make_context(1, retries=0)
        pause = tmp_path / "pause"
    tasks.setup(c)
    tasks.load(c, str(write_lines(tmp_path / "in.txt", ["a\t1", f"pause\t{pause}", "b\t2"])), "input")
    pause.touch()
    run = Background(lambda: tasks.map(c, "wordjobs.pausing", "input", "mapped"))
    os.kill(paused_pid(pause), sent)
    run.join(60)
    assert isinstance(run.error, Exit), run.error
    assert f"killed by {sent.name}" in run.error.message, run.error.message
    assert "SIGHUP" not in run.error.message
