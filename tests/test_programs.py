"""The tests' own way of starting programs: bounded, and reductio's the suite's own."""

from __future__ import annotations

import os
import sys

import pytest

import programs
from conftest import REDUCTIO_PARENT


def test_a_program_still_running_at_its_bound_fails_the_test_saying_what_it_waited_for():
    script = "import sys, time; print('half way', file=sys.stderr, flush=True); time.sleep(60)"
    with pytest.raises(pytest.fail.Exception) as failed:
        programs.run([sys.executable, "-c", script], 2, what="the sleeper")
    assert str(failed.value).startswith("the sleeper was still running after 2 s; its last output:")
    assert "half way" in str(failed.value)


def test_reductio_is_started_by_the_suites_interpreter_and_imports_the_suites_reductio(tmp_path):
    """Run from a folder, with a PATH that has no reductio: what ``-m reductio`` would find is not asked."""
    env = dict(os.environ, PATH="/nonexistent")
    for done in (programs.reductio("--version", cwd=tmp_path, env=env, timeout=60),
                 programs.run([sys.executable, "-c", "import reductio; print(reductio.__file__)"], 60, text=True,
                              cwd=tmp_path, env=programs.importing_the_suites_reductio(env))):
        assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(REDUCTIO_PARENT / "reductio" / "__init__.py")
