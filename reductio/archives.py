"""Archives shipped with a command step, unpacked once per worker into a folder the command sees by name.

Hadoop Streaming's ``-archives`` (and mrjob's ``DIRS`` and ``--archives``):
a tar file (plain, gzip, bzip2 or xz) or a zip file is shipped like any
file (shipping.py, by content) and unpacked beside it, in
``HOME/shipped/SHA256.d``; each run's working folder links it under the
archive's name. Unpacking goes to a private folder first and is renamed
into place, so processes unpacking the same archive at once never see half
of it. A member that would land outside the folder (an absolute name,
``..``, a link pointing out, a device) refuses the whole archive.
Standard library only: this runs on the workers.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path

from reductio.errors import UserCodeError


def check(path: Path) -> None:
    """Refuse, on the head before shipping, a file that is neither a tar nor a zip archive."""
    if not (tarfile.is_tarfile(path) or zipfile.is_zipfile(path)):
        raise UserCodeError(f"{path} is not a tar or zip archive; ship it as a file instead")


def unpacked(archive: Path, name: str) -> Path:
    """The folder holding ``archive``'s contents, unpacked on first use; ``name`` is how errors call it."""
    folder = archive.with_name(archive.name + ".d")
    if folder.is_dir():
        return folder
    private = Path(tempfile.mkdtemp(prefix=f".{archive.name}.", dir=archive.parent))
    try:
        _unpack(archive, private, name)
        os.chmod(private, 0o700)
        try:
            os.rename(private, folder)
        except OSError:  # another process unpacked it first
            if not folder.is_dir():
                raise
    finally:
        shutil.rmtree(private, ignore_errors=True)
    return folder


def _unpack(archive: Path, into: Path, name: str) -> None:
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zipped:
            for member in zipped.namelist():
                _check_inside(name, member)
            zipped.extractall(into)
        return
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                _check_tar_member(name, member)
            if hasattr(tarfile, "data_filter"):  # Pythons that have it warn without a filter
                tar.extractall(into, members, filter="data")
            else:
                tar.extractall(into, members)
    except tarfile.TarError as err:
        raise UserCodeError(f"archive {name!r} cannot be unpacked: {err}") from None


def _check_tar_member(name: str, member: tarfile.TarInfo) -> None:
    _check_inside(name, member.name)
    if member.issym() or member.islnk():  # a symlink's target is relative to its folder, a hard link's to the top
        target = posixpath.join(posixpath.dirname(member.name), member.linkname) if member.issym() else member.linkname
        if not _inside(member.linkname) or not _inside(target):
            raise UserCodeError(f"archive {name!r} holds {member.name!r}, a link to {member.linkname!r} outside"
                                " its folder")
    elif not (member.isfile() or member.isdir()):
        raise UserCodeError(f"archive {name!r} holds {member.name!r}, which is neither a file, a folder nor a link")


def _check_inside(name: str, path: str) -> None:
    if not _inside(path):
        raise UserCodeError(f"archive {name!r} holds {path!r}, which would land outside its folder")


def _inside(path: str) -> bool:
    normal = posixpath.normpath(path)
    return not (path.startswith("/") or normal == ".." or normal.startswith("../"))
