"""Shared fixtures: an isolated HOME, local-worker contexts, the sample project."""

from __future__ import annotations

from pathlib import Path

import pytest
from invoke import Config, Context

SUPPORT = Path(__file__).parent / "_support"
WORDJOBS = SUPPORT / "wordjobs"


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


def make_context(workers: int = 2, project: Path = WORDJOBS) -> Context:
    """A Context for ``workers`` local workers whose project is ``project``."""
    config = Config(overrides={"reductio": {"local_workers": workers}})
    config.set_project_location(str(project))
    return Context(config=config)


@pytest.fixture
def ctx():
    """Two local workers running the wordjobs sample project."""
    return make_context(2)


def write_lines(path: Path, lines) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path
