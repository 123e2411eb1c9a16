"""Programs the tests start, each with a bound; reductio's through the interpreter running the suite.

``reductio`` on PATH may be another checkout's, or missing when the suite runs
with a venv's python that is not activated: the tests start reductio's
program with ``sys.executable`` and the reductio the suite imports
(conftest.reductio_program). A program still running at its bound is killed
and fails its test, naming what the test waited for and its last output,
instead of stalling the run.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

import pytest

from conftest import REDUCTIO_PARENT, reductio_program


def run(argv: list, timeout: float, what: str = "", **options) -> subprocess.CompletedProcess:
    """``subprocess.run(argv)`` with its output captured (unless ``options`` say where it goes), killed after
    ``timeout`` seconds: then the test fails saying ``what`` (by default the command) was still running."""
    if not {"stdout", "stderr"} & set(options):
        options["capture_output"] = True
    try:
        return subprocess.run(argv, timeout=timeout, **options)
    except subprocess.TimeoutExpired as expired:
        said = expired.stderr or expired.stdout or b""
        last = said.decode("utf-8", "replace") if isinstance(said, bytes) else said
        pytest.fail(f"{what or shlex.join(argv)} was still running after {timeout:g} s; its last output:"
                    f" {last[-1000:]!r}", pytrace=False)


def reductio(*argv: str, timeout: float = 300, **options) -> subprocess.CompletedProcess:
    """The ``reductio`` command line with ``argv``, as :func:`run` runs it (text output unless told otherwise)."""
    options.setdefault("text", True)
    return run(reductio_program(*argv), timeout, what=shlex.join(["reductio", *argv]), **options)


def importing_the_suites_reductio(env: dict = None) -> dict:
    """``env`` (by default this process's) with the folder of the reductio the suite imports first on PYTHONPATH,
    for programs started with ``-m`` that import reductio themselves: fab running a fabfile, ``python -m reductio``."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REDUCTIO_PARENT), env.get("PYTHONPATH")]))
    return env


def fab(*argv: str, timeout: float = 300, env: dict = None, **options) -> subprocess.CompletedProcess:
    """Fabric's ``fab`` command line with ``argv``, as :func:`run` runs it, its fabfiles importing the suite's
    reductio."""
    return run([sys.executable, "-m", "fabric", *argv], timeout, what=shlex.join(["fab", *argv]), text=True,
               env=importing_the_suites_reductio(env), **options)
