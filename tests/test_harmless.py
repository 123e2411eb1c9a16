"""The suite harms nothing it did not make: other people's reductio processes and namespaces outlive it."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import skip_unless_root
from ownership import TAG, VARIABLE, command_line, is_ours

REPO = Path(__file__).resolve().parent.parent

# The tests that end processes by what their command lines hold, and what each looks for.
KILLERS = [
    "tests/test_session.py::test_a_session_that_died_is_replaced_by_commands_of_their_own_and_the_job_goes_on",
    "tests/test_guarantees.py::test_killing_a_scatter_sender_publishes_nothing_and_a_rerun_matches",
    "tests/test_streaming.py::test_a_step_stopped_while_a_pipeline_runs_stops_every_process_of_it",
]
LOOKALIKES = ["python3 -m reductio.worker session", "python3 -m reductio.worker send", "sleep 300"]


def start_elsewhere(name: str) -> int:
    """A process named ``name`` (its command line), as someone else's: started by a process that then exits, so
    init adopts it, and without this run's token in its environment. Its pid."""
    spawn = ("import subprocess, sys; print(subprocess.Popen(sys.argv[1:], start_new_session=True,"
             " stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid)")
    env = {key: value for key, value in os.environ.items() if key != VARIABLE}
    done = subprocess.run([sys.executable, "-c", spawn, "bash", "-c", f'exec -a "{name} --decoy" sleep 900'],
                          env=env, capture_output=True, text=True, timeout=30, check=True)
    return int(done.stdout)


def alive_as(pid: int, name: str) -> bool:
    try:
        return name in command_line(Path(f"/proc/{pid}"))
    except OSError:
        return False


@pytest.mark.timeout(900)
def test_processes_that_look_like_the_suites_but_are_not_its_own_survive_the_tests_that_kill(tmp_path):
    decoys = {}
    try:
        for name in LOOKALIKES:
            pid = start_elsewhere(name)
            decoys[pid] = name
            assert alive_as(pid, name) and not is_ours(pid), f"the decoy {name!r} did not start as another's"
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *KILLERS],
                             cwd=REPO, capture_output=True, text=True, timeout=840,
                             env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get(
                                 "PYTHONPATH", "")])))
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
        assert "4 passed" in run.stdout, run.stdout[-2000:]
        killed = [name for pid, name in decoys.items() if not alive_as(pid, name)]
        assert killed == [], f"the suite ended processes it did not make: {killed}"
    finally:
        for pid, name in decoys.items():
            if alive_as(pid, name):
                os.kill(pid, signal.SIGKILL)


def ip(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=30, check=check)


def namespaces() -> set:
    return {line.split()[0] for line in ip("netns", "list").stdout.splitlines() if line.split()}


def test_the_network_tests_sweep_removes_this_runs_leftover_namespaces_and_no_one_elses():
    from netns import _remove_leftovers

    skip_unless_root("making network namespaces")
    others = ["rdx0001-1", f"rdx{secrets.token_hex(4)}-0"]  # an older run's name, another run's
    leftover = f"rdx{TAG}-7"
    try:
        for name in others + [leftover]:
            ip("netns", "add", name)
        _remove_leftovers()
        assert set(others) <= namespaces(), f"removed another run's namespace: {set(others) - namespaces()}"
        assert leftover not in namespaces()
    finally:
        for name in others + [leftover]:
            ip("netns", "del", name, check=False)
