"""Shared fixtures: an isolated HOME, local-worker contexts, the sample project."""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest
from invoke import Config, Context

SUPPORT = Path(__file__).parent / "_support"
WORDJOBS = SUPPORT / "wordjobs"
sys.path.insert(0, str(Path(__file__).parent))  # tests/sshd.py, tests/ownership.py

from ownership import processes_named, processes_with, still_running  # noqa: E402,F401 - tests import them here


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Point HOME at a temp dir and work from another, so ~/.reductio, ~/.ssh and ./workers.cfg stay out."""
    home = tmp_path / "home"
    home.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    return home


def skip_unless_root(what: str) -> None:
    """Skip the test, naming root, when the suite runs as another user (README's test command may): ``what`` is
    what it does that only root may (a mount, network namespaces). As root, anything else missing fails it."""
    if os.geteuid() != 0:
        pytest.skip(f"{what} needs root: this run is not root")


RUNS: list = []  # the Configs the running test made: each is a run, whose connections end with the test


def make_context(count: int = 2, project: Path = WORDJOBS, **settings) -> Context:
    """A Context for ``count`` local workers whose project is ``project``, plus reductio ``settings``: a run of
    its own (a head process), whose tasks share its connections."""
    return _run(Config(overrides={"reductio": dict(settings, local_workers=count)}), project)


def fabric_context(**settings) -> Context:
    """A context on Fabric's own Config, as the reductio program makes it: every connection of the run shares it."""
    from fabric import Config as FabricConfig

    return _run(FabricConfig(overrides={"reductio": settings}), WORDJOBS)


def _run(config, project: Path) -> Context:
    config.set_project_location(str(project))
    RUNS.append(config)
    return Context(config=config)


def end_run(c) -> None:
    """What the head process's exit does to a run's SSH connections and control sessions: close them."""
    from reductio.head import links

    links.of(c.config).close()


@pytest.fixture(autouse=True)
def runs_end_with_the_test():
    """Close the SSH connections of every run the test made, as its head's exit would."""
    from reductio.head import links

    yield
    while RUNS:
        made = links.opened(RUNS.pop())
        if made is not None:
            made.close()


@pytest.fixture
def ctx():
    """Two local workers running the wordjobs sample project."""
    return make_context(2)


def files_per_dataset(c, capsys) -> dict:
    """Files per dataset of a one-worker cluster, read from what the status task prints."""
    from reductio import tasks

    capsys.readouterr()
    tasks.status(c)
    return {row.split()[1]: int(row.split()[5]) for row in capsys.readouterr().out.splitlines()[1:]}


class Background(threading.Thread):
    """Run a task in a thread, keeping what it raised and when it ended (time.monotonic)."""

    def __init__(self, action):
        super().__init__(daemon=True)
        self.action, self.error, self.ended = action, None, None
        self.start()

    def run(self):
        try:
            self.action()
        except BaseException as err:  # noqa: BLE001 - the test inspects it
            self.error = err
        self.ended = time.monotonic()


REDUCTIO_PARENT = Path(__import__("reductio").__file__).resolve().parent.parent


def reductio_program(*args: str) -> list:
    """The argv of reductio's command line run by the interpreter running the suite, importing the reductio the
    suite imports: not whatever ``reductio`` is first on PATH."""
    start = (f"import sys; sys.path.insert(0, {str(REDUCTIO_PARENT)!r}); sys.argv[0] = 'reductio';"
             " from reductio.cli import program; program.run()")
    return [sys.executable, "-c", start, *args]


def gather_pipeline(c, source: Path, run, output: Path) -> Path:
    """load -> map (identity) -> scatter -> sort -> reduce (wordjobs.gather) -> merge into ``output``, the datasets
    named after ``run`` so hypothesis examples in one home do not meet."""
    from reductio import tasks

    tasks.load(c, str(source), f"in-{run}")
    tasks.map(c, "wordjobs.identity", f"in-{run}", f"pairs-{run}")
    tasks.scatter(c, f"pairs-{run}", f"here-{run}")
    tasks.sort(c, f"here-{run}", f"sorted-{run}")
    tasks.reduce(c, "wordjobs.gather", f"sorted-{run}", f"out-{run}")
    tasks.merge(c, f"out-{run}", str(output))
    return output


def write_lines(path: Path, lines) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def sshd_cluster(tmp_path_factory):
    """Three real sshd daemons on 127.0.0.1 for the whole run, stopped by pid at the end (tests/sshd.py)."""
    from sshd import SshCluster

    cluster = SshCluster(tmp_path_factory.mktemp("sshd"), 3)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def ssh_workers(sshd_cluster, isolated_home):
    """Call ``configure(count, local=0)`` to point this test at ``count`` SSH workers (and local ones).

    Writes ./workers.cfg and the daemons' host keys into $HOME/.ssh/known_hosts,
    and starts any daemon an earlier test stopped.
    """
    for daemon in sshd_cluster.daemons:
        if daemon.process is None:
            daemon.start()
    ssh_dir = isolated_home / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "known_hosts").write_text(sshd_cluster.known_hosts())
    # The daemons' homes serve the whole run. A worker an earlier test lost keeps that step's attempt folder,
    # as a real one does until clean's hour: each test starts without them, and checks only its own.
    for leftover in sshd_cluster.homes.glob("*/tmp/*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)

    def configure(count: int = 3, local: int = 0) -> Path:
        path = Path("workers.cfg")
        path.write_text(sshd_cluster.workers_cfg(sshd_cluster.homes, count=count, local=local))
        return path

    yield configure
