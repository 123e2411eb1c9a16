"""reductio ships as an sdist: built here, installed into a clean venv, runs the example from there."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

import reductio
from conftest import WORDJOBS
from reductio.head import packaging
from test_archives import PYTHONS

REPO = Path(__file__).resolve().parent.parent


def test_the_sdist_installs_in_a_clean_venv_and_runs_the_bundled_example(tmp_path, isolated_home):
    dist = tmp_path / "dist"
    built = subprocess.run([sys.executable, "-m", "build", "--sdist", "--outdir", str(dist), str(REPO)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    (sdist,) = dist.glob("reductio-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
    for needed in ("setup.py", "README.rst", "reductio/example/sample-words.txt", "reductio/worker/__main__.py",
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


@pytest.mark.parametrize("python", PYTHONS)
def test_an_sdist_is_unpacked_for_its_wheel_without_a_warning_on_every_python(tmp_path, python):
    """Python 3.12 and later warn when tarfile unpacks with no filter: under -W error, that warning fails."""
    sdist = packaging.build_sdist(WORDJOBS, tmp_path / "sdist")
    unpack = ("import sys, tarfile; from pathlib import Path; from reductio.head import packaging;"
              " packaging._safe_extract(tarfile.open(sys.argv[1]), Path(sys.argv[2]))")
    done = subprocess.run([python, "-W", "error", "-c", unpack, str(sdist), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "out" / "wordjobs-0.1" / "setup.py").is_file()


def test_a_project_whose_backend_fails_is_one_error_with_the_end_of_its_output(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[build-system]\nrequires = []\nbuild-backend = "brokenbackend"\n'
                                             'backend-path = ["."]\n')
    (tmp_path / "brokenbackend.py").write_text("def build_sdist(out, config_settings=None):\n"
                                               "    raise SystemExit('no sdist today: ' + out)\n")
    with pytest.raises(packaging.ReductioError, match=f"build_sdist of {tmp_path} failed") as failed:
        packaging.build_sdist(tmp_path, tmp_path / "out")
    assert "no sdist today" in failed.value.details


def test_the_backend_is_the_one_of_the_build_system_table_not_any_line_that_looks_like_it(tmp_path):
    """A tool's own ``build-backend`` key is no build system: with no [build-system] table, PEP 517's default
    (setuptools' legacy backend) builds the project."""
    project = tmp_path / "wordjobs"
    shutil.copytree(WORDJOBS, project)
    (project / "pyproject.toml").write_text('[tool.release]\nbuild-backend = "not.a.backend"\n')
    sdist = packaging.build_sdist(project, tmp_path / "sdist")
    assert sdist.name == "wordjobs-0.1.tar.gz"
    assert packaging.build_wheel(sdist, tmp_path / "wheel").name.startswith("wordjobs-0.1-")


def test_a_wheelhouse_added_after_distribute_is_installed_by_the_next_distribute(ssh_workers, tmp_path, capsys):
    from invoke import Exit

    from conftest import SUPPORT, make_context, write_lines
    from reductio import tasks

    ssh_workers(2)
    c = make_context(project=SUPPORT / "depjob")
    tasks.setup(c)  # no wheelhouse: depjob without its dependency
    tasks.load(c, str(write_lines(tmp_path / "in.txt", ["quiet\t1", "calm\t2"])), "text")
    with pytest.raises(Exit, match="No module named 'tinydep'"):
        tasks.map(c, "depjob.shouted", "text", "loud")
    wheelhouse = tmp_path / "wheels"
    packaging.build_wheel(packaging.build_sdist(SUPPORT / "tinydep", tmp_path / "sdist"), wheelhouse)
    c = make_context(project=SUPPORT / "depjob", wheelhouse=str(wheelhouse))
    capsys.readouterr()
    tasks.distribute(c)
    assert "distribute: installed depjob-0.1.tar.gz on ssh-0, ssh-1" in capsys.readouterr().out
    tasks.map(c, "depjob.shouted", "text", "loud")
    tasks.merge(c, "loud", str(tmp_path / "loud.tsv"))
    assert (tmp_path / "loud.tsv").read_text() == "CALM\t2\nQUIET\t1\n"
    tasks.distribute(c)
    assert "depjob-0.1.tar.gz unchanged on every SSH worker" in capsys.readouterr().out
    (wheelhouse / "extra-1.0-py3-none-any.whl").write_bytes((next(wheelhouse.glob("tinydep-*.whl"))).read_bytes())
    tasks.distribute(c)  # a wheel more in the wheelhouse: installed again
    assert "distribute: installed depjob-0.1.tar.gz on ssh-0, ssh-1" in capsys.readouterr().out
    with pytest.raises(Exit, match=f"the wheelhouse {tmp_path / 'none'} is not a folder"):
        tasks.distribute(make_context(project=SUPPORT / "depjob", wheelhouse=str(tmp_path / "none")))


def _set_up_with_text(ssh_workers, tmp_path, count: int) -> tuple:
    """Two SSH workers set up for the sample project, ``count`` lines loaded as dataset "text": its context and
    the lines."""
    from conftest import make_context, write_lines
    from reductio import tasks

    ssh_workers(2)
    c = make_context(project=WORDJOBS)
    tasks.setup(c)
    lines = [f"k{i % 13}\tv{i}" for i in range(count)]
    tasks.load(c, str(write_lines(tmp_path / "in.txt", lines)), "text")
    return c, lines


def test_a_worker_left_on_another_reductio_refuses_each_step_until_setup_installs_the_heads(ssh_workers, sshd_cluster,
                                                                                          tmp_path):
    """A head upgraded without setup run again: its SSH workers still hold the reductio an earlier setup
    installed. A step there says so and runs none of the old code; setup installs the head's, and the job is
    exact."""
    from invoke import Exit

    from reductio import tasks

    c, lines = _set_up_with_text(ssh_workers, tmp_path, 200)
    home = sshd_cluster.homes / "ssh-1"  # an earlier release: one module differs, and setup's record of it
    (module,) = (home / "venv" / "lib").glob("*/site-packages/reductio/wire/records.py")
    module.write_text(module.read_text() + "\n# an earlier release\n")
    (home / "dist" / "reductio.digest").write_text("0" * 64)
    with pytest.raises(Exit) as failed:
        tasks.map(c, "wordjobs.identity", "text", "copied")
    assert "ssh-1" in failed.value.message and "ssh-0" not in failed.value.message, failed.value.message
    assert "reductio is not the head's (installed by an earlier setup): run setup" in failed.value.message
    tasks.setup(c)
    tasks.map(c, "wordjobs.identity", "text", "copied")
    tasks.merge(c, "copied", str(tmp_path / "out.tsv"))
    assert sorted((tmp_path / "out.tsv").read_text().splitlines()) == sorted(lines)


def _own_code_of(parent: Path) -> subprocess.CompletedProcess:
    """own_code.digest() as a worker importing the reductio in ``parent`` takes it."""
    return subprocess.run([sys.executable, "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]);"
                           " from reductio.wire import own_code; print(own_code.digest())", str(parent)],
                          capture_output=True, text=True, timeout=60)


def test_the_code_digest_passes_over_what_is_not_a_module_file_as_the_workers_sdist_does(tmp_path):
    """An editor's lock file beside a module being edited (Emacs: .#steps.py, a symlink to nowhere) is no module:
    the sdist leaves it out, so the digest must too, and not stop every step with a traceback."""
    shutil.copytree(Path(reductio.__file__).resolve().parent, tmp_path / "reductio",
                    ignore=shutil.ignore_patterns("__pycache__"))
    before = _own_code_of(tmp_path)
    assert before.returncode == 0, before.stderr
    (tmp_path / "reductio" / "worker" / ".#steps.py").symlink_to("someone@somewhere.12345:1765000000")
    after = _own_code_of(tmp_path)
    assert after.returncode == 0, after.stderr
    assert after.stdout == before.stdout


def test_setup_installs_the_heads_reductio_again_on_a_worker_whose_reductio_changed_behind_its_record(
        ssh_workers, sshd_cluster, tmp_path):
    """The worker's reductio replaced without setup (a wheelhouse's reductio wheel that distribute installed
    with the project, a pip install in its environment): setup's record of what it installed still matches the
    head's, yet every step refuses, saying to run setup. setup must then install the head's again."""
    from invoke import Exit

    from reductio import tasks

    c, lines = _set_up_with_text(ssh_workers, tmp_path, 50)
    (module,) = (sshd_cluster.homes / "ssh-1" / "venv" / "lib").glob("*/site-packages/reductio/wire/records.py")
    module.write_text(module.read_text() + "\n# another reductio's\n")
    with pytest.raises(Exit, match="reductio is not the head's"):
        tasks.map(c, "wordjobs.identity", "text", "copied")
    tasks.setup(c)
    tasks.map(c, "wordjobs.identity", "text", "copied")
    tasks.merge(c, "copied", str(tmp_path / "out.tsv"))
    assert sorted((tmp_path / "out.tsv").read_text().splitlines()) == sorted(lines)


def test_an_environment_made_before_setup_recorded_its_python_is_kept_when_made_by_the_python_set(
        ssh_workers, sshd_cluster):
    """Environments an earlier reductio made hold no record of the python setting that made them: one made by
    the Python the worker is set to (here pypy3) is kept, not made anew as python3's; one made by another
    Python is made anew, without naming python3 as its maker."""
    from conftest import make_context
    from reductio.head.cluster import Cluster

    pypy3 = shutil.which("pypy3")
    assert pypy3, "this test needs PyPy: apt-get install pypy3 pypy3-venv"
    ssh_workers(1)
    on_pypy = sshd_cluster.workers_cfg(sshd_cluster.shared("unrecorded"), count=1, python=pypy3)
    Path("workers.cfg").write_text(on_pypy)
    (worker,) = Cluster.from_context(make_context(project=WORDJOBS)).workers
    venv = worker.venv
    made = worker.run(f"mkdir -p {worker.home} && {pypy3} -m venv {venv} && touch {venv}/kept")
    assert made.exited == 0, made.stderr
    assert packaging.ensure_venv(worker) is None
    assert worker.run(f"test -e {venv}/kept").exited == 0, "made anew"
    assert worker.run(f"rm -f {venv}/{packaging._MADE_BY}").exited == 0  # unrecorded again, the worker set to python3
    Path("workers.cfg").write_text(on_pypy.replace(f"python = {pypy3}\n", ""))
    (worker,) = Cluster.from_context(make_context(project=WORDJOBS)).workers
    assert worker.venv == venv and worker.spec.python is None
    said = packaging.ensure_venv(worker)
    assert said == ("its environment was made by another Python, not python3: made anew, and what was installed"
                    " in it is installed again")
    assert worker.run(f"test -e {venv}/kept").exited == 1, "kept"
    made = worker.run(f"{venv}/bin/python -c 'import sys; print(sys.implementation.name)'")
    assert made.stdout.strip() == "cpython"


def test_a_worker_on_a_reductio_from_before_the_code_check_refuses_the_step_too(ssh_workers, sshd_cluster,
                                                                                 tmp_path):
    """A head upgraded past the release that brought the check, setup not run again: its workers hold a
    reductio that never looks at the head's digest (simulated: the installed entry point as that release's,
    taking one word and checking nothing, and one module changed; reductio from commit 8bb6b18 installed on a
    worker ran the map silently before the digest went into argv). A step there is refused all the same, not
    run with the older rules."""
    from invoke import Exit

    from reductio import tasks

    c, lines = _set_up_with_text(ssh_workers, tmp_path, 2000)
    (site,) = (sshd_cluster.homes / "ssh-1" / "venv" / "lib").glob("*/site-packages/reductio")
    main = site / "worker" / "__main__.py"
    steps = site.parent / "reductio-worker-main.py"  # outside the package: setup's install leaves it be
    shutil.copy(main, steps)  # the steps as they are; the entry point as it was, one word and no check
    main.write_text("import sys\nif len(sys.argv) != 2:\n"
                    "    print('usage: python -m reductio.worker {map,...} (its parameters first on stdin)',"
                    " file=sys.stderr)\n    sys.exit(2)\n"
                    f"steps = {{'__name__': 'reductio.worker.older', '__package__': 'reductio.worker'}}\n"
                    f"exec(compile(open({str(steps)!r}).read(), {str(steps)!r}, 'exec'), steps)\n"
                    "sys.exit(steps['main']())\n")
    records = site / "wire" / "records.py"
    records.write_text(records.read_text() + "\n# an earlier release\n")
    with pytest.raises(Exit, match="reductio is not the head's"):
        tasks.map(c, "wordjobs.identity", "text", "copied")
    tasks.setup(c)  # as the refusal says: the head's reductio again, whatever the worker's record
    tasks.map(c, "wordjobs.identity", "text", "copied")
    tasks.merge(c, "copied", str(tmp_path / "out.tsv"))
    assert sorted((tmp_path / "out.tsv").read_text().splitlines()) == sorted(lines)


def test_a_folder_in_the_package_that_is_no_package_leaves_the_workers_code_digest_the_heads(tmp_path):
    """What the workers' wheel leaves out, as setuptools' find_packages does (a folder without __init__.py,
    JupyterLab's .ipynb_checkpoints beside a module it saved), cannot count in the code digest: a worker
    installed by setup would differ from its head for good, refusing every step, setup or not."""
    copy = tmp_path / "head"
    shutil.copytree(Path(reductio.__file__).resolve().parent, copy / "reductio",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "reductio" / "worker" / ".ipynb_checkpoints").mkdir()
    (copy / "reductio" / "worker" / ".ipynb_checkpoints" / "steps-checkpoint.py").write_text("# JupyterLab's\n")
    (copy / "reductio" / "scratch").mkdir()
    (copy / "reductio" / "scratch" / "notes.py").write_text("# a folder of notes, no package\n")
    head = _own_code_of(copy)
    assert head.returncode == 0, head.stderr
    build = ("import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; from reductio.head import"
             " packaging; out = Path(sys.argv[2]); print(packaging.build_wheel(packaging.reductio_sdist(out), out))")
    built = subprocess.run([sys.executable, "-I", "-c", build, str(copy), str(tmp_path / "dist")],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    venv.create(tmp_path / "venv", with_pip=True)
    python = str(tmp_path / "venv" / "bin" / "python")
    installed = subprocess.run([python, "-I", "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                                built.stdout.strip()], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-3000:]
    worker = subprocess.run([python, "-I", "-c", "from reductio.wire import own_code; print(own_code.digest())"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert worker.returncode == 0, worker.stderr
    assert worker.stdout == head.stdout


def test_an_environment_whose_python_was_upgraded_underneath_it_is_made_anew_by_setup(ssh_workers, sshd_cluster,
                                                                                       tmp_path):
    """The Python a worker's environment was made by, upgraded under the same setting (Debian's python3 from 3.11
    to 3.12: its venv's bin/python now starts a Python that finds none of the packages installed for the old
    one; here PyPy stands in for the new Python): setup makes the environment anew and installs again, and the
    job runs, where it kept it and failed in pip."""
    from reductio import tasks

    pypy3 = shutil.which("pypy3")
    assert pypy3, "this test needs PyPy: apt-get install pypy3 pypy3-venv"
    c, lines = _set_up_with_text(ssh_workers, tmp_path, 100)
    bin_folder = sshd_cluster.homes / "ssh-1" / "venv" / "bin"
    for name in ("python", "python3"):  # what an upgrade of /usr/bin/python3 does to a venv made by it
        (bin_folder / name).unlink()
        (bin_folder / name).symlink_to(pypy3)
    tasks.setup(c)
    ran = subprocess.run([str(bin_folder / "python"), "-c", "import sys, reductio; print(sys.implementation.name)"],
                         capture_output=True, text=True, timeout=60)
    assert ran.stdout.strip() == "cpython", ran.stderr
    tasks.map(c, "wordjobs.identity", "text", "copied")
    tasks.merge(c, "copied", str(tmp_path / "out.tsv"))
    assert sorted((tmp_path / "out.tsv").read_text().splitlines()) == sorted(lines)
