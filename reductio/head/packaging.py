"""Code for SSH workers: sdists built on the head, pushed over SSH, installed in the worker's venv.

Each sdist is also turned into a wheel on the head, with the head's own
build backend, so a worker needs neither a package index nor setuptools:
its pip only unpacks a wheel. An install is skipped when the worker already
has the same content (a digest of the sdist's files, not of its timestamps).
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Dict, Optional

import reductio
from reductio.errors import DISK_FULL, ConfigError, ReductioError, StreamBroken, disk_full
from reductio.wire import own_code
from reductio.wire.protocol import shell_path

_MADE_BY = "reductio-python"  # in a worker's venv: the python setting that made it
# which Python runs: a venv's and the Python that made it answer alike, another Python (or version) does not
_IDENTITY = shlex.quote("import sys; print(sys.implementation.name, *sys.version_info[:2], sys.base_prefix)")
_WORKER_SETUP = """from setuptools import find_packages, setup
setup(name="reductio", version={version!r}, packages=find_packages(include=["reductio", "reductio.*"]),
      package_data={{"reductio.example": ["sample-words.txt"]}}, python_requires=">=3.9")
"""


def find_project(start: str) -> Optional[Path]:
    """The nearest folder at or above ``start`` holding setup.py or pyproject.toml."""
    folder = Path(start).resolve()
    for candidate in (folder, *folder.parents):
        if (candidate / "setup.py").is_file() or (candidate / "pyproject.toml").is_file():
            return candidate
    return None


def build_sdist(project: Path, out: Path) -> Path:
    """Build the project's sdist into ``out`` with its own PEP 517 backend, in this Python (no isolation)."""
    return _build(project, "sdist", out)


def build_wheel(sdist: Path, out: Path) -> Path:
    """Build a wheel from an unpacked sdist, on the head."""
    with tempfile.TemporaryDirectory(prefix="reductio-build-") as scratch:
        with tarfile.open(sdist) as archive:
            _safe_extract(archive, Path(scratch))
        (root,) = [p for p in Path(scratch).iterdir() if p.is_dir()]
        return _build(root, "wheel", out)


def reductio_sdist(out: Path) -> Path:
    """An sdist of the reductio that runs here, for the workers: its files, no dependencies.

    Built from the installed package, so it works from a checkout and from
    site-packages alike; the worker side needs only the standard library.
    """
    package = Path(reductio.__file__).resolve().parent
    name = f"reductio-{reductio.__version__}"
    out.mkdir(parents=True, exist_ok=True)
    sdist = out / f"{name}.tar.gz"
    with tarfile.open(sdist, "w:gz") as archive:
        for path in sorted(package.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix in (".py", ".txt"):
                archive.add(path, f"{name}/reductio/{path.relative_to(package)}", filter=_plain)
        setup_py = out / "setup.py"
        setup_py.write_text(_WORKER_SETUP.format(version=reductio.__version__))
        archive.add(setup_py, f"{name}/setup.py", filter=_plain)
        setup_py.unlink()
    return sdist


def content_digest(sdist: Path) -> str:
    """A digest of the sdist's file names and contents: equal when nothing changed."""
    digest = hashlib.sha256()
    with tarfile.open(sdist) as archive:
        for member in sorted(archive.getmembers(), key=lambda m: m.name):
            if member.isfile():
                digest.update(member.name.encode() + b"\0")
                digest.update(archive.extractfile(member).read())
    return digest.hexdigest()


def _plain(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    return info


def _build(project: Path, distribution: str, out: Path) -> Path:
    """Build ``distribution`` ("sdist" or "wheel") of ``project`` with pypa's build, as ``python -m build
    --no-isolation`` would: the backend that pyproject.toml names, or setuptools' legacy one."""
    import build  # the head's only: a worker never builds

    out.mkdir(parents=True, exist_ok=True)
    try:
        return Path(build.ProjectBuilder(project, runner=_quiet).build(distribution, out))
    except build.BuildBackendException as err:
        failed = err.exception
        output = (getattr(failed, "stderr", None) or getattr(failed, "output", None) or str(failed)).strip()
        raise ReductioError(f"build_{distribution} of {project} failed",
                            "\n".join(output.splitlines()[-15:])) from None
    except build.BuildException as err:
        raise ReductioError(f"cannot build {project}: {err}") from None


def _quiet(command, cwd=None, extra_environ=None) -> None:
    """Run a build hook keeping its output, shown only when it fails (pyproject_hooks' runner interface)."""
    done = subprocess.run(command, cwd=cwd, env={**os.environ, **(extra_environ or {})}, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, command, done.stdout, done.stderr)


def _safe_extract(archive: tarfile.TarFile, folder: Path) -> None:
    root = folder.resolve()
    for member in archive.getmembers():
        target = (folder / member.name).resolve()
        if root not in target.parents and target != root or member.issym() or member.islnk():
            raise ReductioError(f"refusing sdist member {member.name!r}: it points outside the archive")
    if hasattr(tarfile, "data_filter"):  # and newer Pythons warn without a filter
        archive.extractall(folder, filter="data")
    else:
        archive.extractall(folder)


def checked_name(path: Path) -> str:
    """A built file's name, safe to put in a path on the worker."""
    if not re.fullmatch(r"[A-Za-z0-9_.+-]+", path.name):
        raise ReductioError(f"unexpected characters in built file name {path.name!r}")
    return path.name


def file_digest(path: Path) -> str:
    """The SHA-256 of a file, read in large blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as data:
        for block in iter(lambda: data.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# The worker's end of push, run by the worker's own Python with -I: standard library only, since the reductio
# sdist itself comes this way. It keeps the file only if it arrived whole: a head killed mid-push closes the
# stream early, which ``cat`` took for the end of the file. argv: path, size, SHA-256, mode, marker ('' for none).
_RECEIVE = """
import hashlib, os, sys
path, size, digest, mode, marker = sys.argv[1:6]
folder, name = os.path.split(path)
for entry in os.listdir(folder):  # what receivers killed before they could clean up left, and cat's X.part
    if entry.startswith(name + ".") and entry.endswith(".part"):
        writer = entry[len(name) + 1:-len(".part")]
        try:
            if writer:
                os.kill(int(writer), 0)
                continue  # its receiver still runs
        except ProcessLookupError:
            pass
        except (ValueError, OSError):
            continue
        os.unlink(os.path.join(folder, entry))
part = "%s.%d.part" % (path, os.getpid())
seen, count = hashlib.sha256(), 0
try:
    with open(os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
        for block in iter(lambda: os.read(0, 1 << 20), b""):
            seen.update(block)
            count += len(block)
            out.write(block)
        out.flush()
        os.fsync(out.fileno())
    if count != int(size):
        sys.exit("%s arrived with %d of %s bytes; not kept" % (name, count, size))
    if seen.hexdigest() != digest:
        sys.exit("%s arrived with SHA-256 %s, not %s; not kept" % (name, seen.hexdigest(), digest))
    if marker and os.path.lexists(marker):
        os.unlink(marker)
    os.chmod(part, int(mode, 8))
    os.replace(part, path)
finally:
    if os.path.lexists(part):
        os.unlink(part)
if marker:
    written = "%s.%d.tmp" % (marker, os.getpid())
    with open(written, "w") as out:
        out.write(size)
    os.replace(written, marker)
"""


def push(worker, local: Path, remote: str, mode: str = "600", digest: str = None, marker: str = None) -> None:
    """Copy a local file to a path on the worker, appearing there only once it arrived whole.

    The worker checks its size and SHA-256 (``digest``, else computed here)
    before renaming it into place, and refuses a file cut short or changed on
    the way. ``marker``: a path on the worker that gets the file's size once
    it is in place, and loses it before it is replaced (layout.shipped_whole).
    """
    size = os.path.getsize(local)
    digest = digest or file_digest(local)
    folder = shell_path(os.path.dirname(remote) or ".")
    marked = shell_path(marker) if marker else "''"
    command = (f"umask 077 && mkdir -p {folder} && {worker.python()} -I -c {shlex.quote(_RECEIVE)}"
               f" {shell_path(remote)} {size} {digest} {mode} {marked}")
    stream = worker.open_command(command, "w")
    try:
        with open(local, "rb") as data:
            for block in iter(lambda: data.read(1 << 20), b""):
                stream.write(block)
    except StreamBroken:
        pass  # the receiver stopped reading: its exit and its stderr say why
    except BaseException:
        stream.kill()
        raise
    done = stream.finished()
    if done.exited != 0 and any(said in done.stderr for said in DISK_FULL):
        full = disk_full(worker.home, local=worker.is_local)
        raise ReductioError(f"copying {local.name} to the worker failed: {full}")
    if done.exited != 0:
        raise ReductioError(f"copying {local.name} to {remote} failed (exit {done.exited}):"
                            f" {done.stderr.strip()[-300:]}")


def ensure_venv(worker) -> Optional[str]:
    """Create the worker's home and virtual environment unless they exist, made by the Python it is set to.

    An environment made by another ``python`` setting (python3, then pypy3)
    is made anew, and what was installed in it is installed again: the
    step would otherwise run on the old interpreter, silently. One made
    before that setting was recorded in it (an earlier reductio) is the
    setting's when its Python is the same one (_IDENTITY). One whose own
    Python no longer finds its packages (that Python upgraded underneath
    it, 3.11 to 3.12) is made anew too. Returns a line saying it was made
    by another setting, or None when it was kept or new.
    """
    wanted = worker.spec.python or "python3"
    python, home, venv = shell_path(wanted), shell_path(worker.home), shell_path(worker.venv)
    made_by, dist = shell_path(f"{worker.venv}/{_MADE_BY}"), shell_path(f"{worker.home}/dist")
    setting = shlex.quote(wanted)  # compared and recorded as written, not as a path
    same = f'test "$({venv}/bin/python -c {_IDENTITY} 2>&1)" = "$({python} -c {_IDENTITY} 2>&1)"'
    runs = f"{venv}/bin/python -I -c 'import pip' 2>/dev/null"  # its Python upgraded underneath: its packages gone
    result = worker.run(
        f"umask 077 && mkdir -p {home} && chmod 700 {home} && was=$(cat {made_by} 2>/dev/null"
        f" || {{ test -x {venv}/bin/python && if {same}; then printf '%s' {setting}; else echo 'another Python'; fi; }}"
        f" || :) && if test -x {venv}/bin/python && test \"$was\" = {setting} && {runs}; then"
        f" test -e {made_by} || printf '%s' {setting} > {made_by}; else"
        f" if test -e {venv}; then test \"$was\" = {setting} || test -z \"$was\" || echo \"replaced: $was\";"
        f" rm -rf {venv} {dist}/*.digest; fi"
        f" && {python} -m venv {venv} && printf '%s' {setting} > {made_by}; fi")
    if result.exited != 0:
        raise ReductioError(
            f"cannot create a virtual environment with {wanted}:"
            f" {(result.stderr or result.stdout).strip().splitlines()[-1:] or ''}"
            " (Debian: apt-get install python3-venv; or set python = ... for this worker)"
        )
    replaced = [line for line in result.stdout.splitlines() if line.startswith("replaced: ")]
    if not replaced:
        return None
    return (f"its environment was made by {replaced[-1][len('replaced: '):]}, not {wanted}: made anew,"
            " and what was installed in it is installed again")


def installed_digest(worker, name: str) -> str:
    """The content digest of what the worker last installed as ``name``, or ''. For reductio, '' as well when
    the code its environment imports is not the head's (own_code): replaced since its install, by a
    wheelhouse's reductio that distribute installed with the project or by a pip install of the user's, so
    that setup, which every step then says to run, installs the head's again."""
    command = f"cat {shell_path(worker.home + '/dist/' + name + '.digest')} 2>/dev/null || true"
    if name == "reductio":
        code = f"{worker.python()} -I -c 'from reductio.wire import own_code; print(own_code.digest())' 2>/dev/null"
        command = f'test "$({code})" = {own_code.digest()} && {command}'
    return worker.run(command).stdout.strip()


def install(worker, name: str, sdist: Path, wheel: Path, digest: str,
            wheels: Optional[Dict[Path, str]] = None) -> None:
    """Push an sdist and its wheel to the worker and pip install the wheel into its venv.

    With a wheelhouse (``wheels``: each wheel's SHA-256), its wheels replace
    those the worker had and the project's dependencies are installed from
    them; otherwise none are.
    """
    dist = worker.home.rstrip("/") + "/dist"
    push(worker, sdist, f"{dist}/{checked_name(sdist)}")
    push(worker, wheel, f"{dist}/{checked_name(wheel)}")
    pip = f"{shell_path(worker.venv + '/bin/python')} -m pip install --no-index --force-reinstall"
    pip += " --disable-pip-version-check -q"
    if wheels is not None:
        cleared = worker.run(f"rm -rf {shell_path(dist + '/wheels')}")  # a wheel gone from the wheelhouse goes
        if cleared.exited != 0:
            raise ReductioError(f"cannot clear {dist}/wheels: {cleared.stderr.strip()[-300:]}")
        for extra, extra_digest in sorted(wheels.items()):
            push(worker, extra, f"{dist}/wheels/{checked_name(extra)}", digest=extra_digest)
        pip += f" --find-links {shell_path(dist + '/wheels')}"
    else:
        pip += " --no-deps"
    record = shell_path(f"{dist}/{name}.digest")
    result = worker.run(f"{pip} {shell_path(dist + '/' + wheel.name)} && echo {digest} > {record}")
    if result.exited != 0:
        raise ReductioError(f"pip install of {wheel.name} failed", (result.stderr or result.stdout).strip()[-2000:])


def wheelhouse_digests(wheelhouse: Optional[Path]) -> Optional[Dict[Path, str]]:
    """Each wheel of the wheelhouse folder with its SHA-256; None without one; a wheelhouse that is no folder
    is a ConfigError."""
    if wheelhouse is None:
        return None
    if not wheelhouse.is_dir():
        raise ConfigError(f"the wheelhouse {wheelhouse} is not a folder (reductio: wheelhouse)")
    return {path: file_digest(path) for path in sorted(wheelhouse.glob("*.whl"))}


def deploy_digest(sdist: Path, wheels: Optional[Dict[Path, str]]) -> str:
    """What a worker records of an install: the sdist's content digest, and with a wheelhouse each wheel's name
    and SHA-256, so that a wheelhouse added, changed or removed is installed again."""
    digest = content_digest(sdist)
    if wheels is None:
        return digest
    listing = "".join(f"{path.name} {wheel}\n" for path, wheel in sorted(wheels.items()))
    return hashlib.sha256(f"{digest}\nwheelhouse\n{listing}".encode()).hexdigest()


def deploy(cluster, name: str, sdist: Path, wheelhouse: Optional[Path] = None) -> list:
    """Install ``sdist`` (and the ``wheelhouse``) on every SSH worker whose ``name`` record lacks this content;
    return their names."""
    wheels = wheelhouse_digests(wheelhouse)
    digest = deploy_digest(sdist, wheels)
    remote = [w for w in cluster.workers if not w.is_local]
    current = cluster.each(f"distribute {name}", lambda w: installed_digest(w, name), remote)
    stale = [w for w in remote if current[w.name] != digest]
    if stale:
        with tempfile.TemporaryDirectory(prefix="reductio-wheel-") as scratch:
            wheel = build_wheel(sdist, Path(scratch))
            cluster.each(f"distribute {name}", lambda w: install(w, name, sdist, wheel, digest, wheels), stale)
        for worker in stale:
            worker.end_session()  # it imported the code just replaced
    return [w.name for w in stale]
