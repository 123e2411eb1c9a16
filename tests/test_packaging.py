"""reductio ships as an sdist: built here, installed into a clean venv, runs the example from there."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import reductio
from conftest import WORDJOBS
from reductio import packaging

REPO = Path(__file__).resolve().parent.parent


def test_the_sdist_installs_in_a_clean_venv_and_runs_the_bundled_example(tmp_path, isolated_home):
    dist = tmp_path / "dist"
    built = subprocess.run([sys.executable, "-m", "build", "--sdist", "--outdir", str(dist), str(REPO)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    (sdist,) = dist.glob("reductio-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
    for needed in ("setup.py", "README.rst", "reductio/example/sample-words.txt", "reductio/worker.py",
                   "tests/conftest.py"):
        assert any(name.endswith(needed) for name in names), needed

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    installed = subprocess.run([str(python), "-m", "pip", "install", "-q", str(sdist)], capture_output=True, text=True,
                               timeout=300)
    assert installed.returncode == 0, installed.stderr[-3000:]
    fabfile = subprocess.run([str(python), "-c", "import reductio.example.fabfile as f; print(f.__file__)"],
                             capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert fabfile.returncode == 0, fabfile.stderr
    words = tmp_path / "words.txt"
    words.write_text("abc\nbcd\n")
    run = subprocess.run([str(env_dir / "bin" / "reductio"), "-f", fabfile.stdout.strip(), "setup", "bigrams",
                          "--words", str(words), "--output", str(tmp_path / "out.tsv")],
                         capture_output=True, text=True, cwd=tmp_path, env={"HOME": str(isolated_home),
                                                                             "PATH": "/usr/bin:/bin"}, timeout=300)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "out.tsv").read_text() == "ab\t1\nbc\t2\ncd\t1\n"


def test_sdist_content_digest_ignores_build_times_but_not_content(tmp_path):
    first = packaging.build_sdist(WORDJOBS, tmp_path / "a")
    second = packaging.build_sdist(WORDJOBS, tmp_path / "b")
    assert packaging.content_digest(first) == packaging.content_digest(second)
    worker = packaging.reductio_sdist(tmp_path / "c")
    assert packaging.content_digest(worker) != packaging.content_digest(first)
    wheel = packaging.build_wheel(first, tmp_path / "wheel")
    assert wheel.name.startswith("wordjobs-0.1-") and wheel.suffix == ".whl"


def test_the_worker_sdist_of_reductio_holds_the_package_and_no_dependencies(tmp_path):
    """What the workers install: the wheel built from it, as an SSH worker's setup builds it, holds every module of
    every package of reductio (a package missing from the sdist's setup.py fails every SSH worker) and asks for
    nothing else (the workers have no index to install from)."""
    sdist = packaging.reductio_sdist(tmp_path / "sdist")
    with tarfile.open(sdist) as archive:
        assert not any("__pycache__" in name for name in archive.getnames())
    wheel = packaging.build_wheel(sdist, tmp_path / "wheel")
    with zipfile.ZipFile(wheel) as built:
        files = set(built.namelist())
        (metadata,) = [name for name in files if name.endswith(".dist-info/METADATA")]
        requires = [line for line in built.read(metadata).decode().splitlines()
                    if line.startswith(("Requires-Dist:", "Provides-Extra:"))]
    package = Path(reductio.__file__).resolve().parent
    modules = {f"reductio/{path.relative_to(package).as_posix()}" for path in package.rglob("*.py")}
    assert sorted(modules - files) == [], "modules the workers' wheel leaves out"
    assert "reductio/example/sample-words.txt" in files
    assert requires == []
