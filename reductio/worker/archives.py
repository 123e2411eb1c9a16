"""Archives shipped with a command step, unpacked once per worker into a folder the command sees by name.

Hadoop Streaming's ``-archives`` (and mrjob's ``DIRS`` and ``--archives``):
a tar file (plain, gzip, bzip2 or xz) or a zip file is shipped like any
file (shipping.py, by content) and unpacked beside it, in
``HOME/shipped/SHA256.unpacked``; each run's working folder links it under
the archive's name. Unpacking goes to a private folder first and is renamed
into place, so processes unpacking the same archive at once never see half
of it.

Nothing an archive holds may land, or lead, outside its folder, on any
Python (tarfile's own ``data`` filter is not on every supported one, and
has been got past). So members are written here, not by tarfile or
zipfile: every path is resolved against what the earlier members made,
link by link, in a model of the folder kept as it is written, never by the
text of the path nor by asking the file system (``os.path.realpath`` gives
up on long paths and lets a link pass). A member that would land outside,
a link (symbolic or hard) that would lead outside once every member is in
place, a device, or more than ``max_members`` members or ``max_unpacked``
bytes refuses the whole archive. Standard library only: this runs on the
workers.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path

from reductio.errors import UserCodeError

UNPACKED = ".unpacked"  # HOME/shipped/SHA256.unpacked: that archive unpacked (layout.py)
MAX_UNPACKED = 1 << 30  # bytes of files one archive may unpack to, unless 100 times its size is more ...
RATIO = 100  # ... or max_unpacked says otherwise
MAX_MEMBERS = 200_000  # the max_members setting's default
_LINK_DEPTH = 40  # links followed resolving one path, as Linux allows


def unpacked(archive: Path, name: str, max_unpacked: int = None, max_members: int = None) -> Path:
    """The folder holding ``archive``'s contents, unpacked on first use; ``name`` is how errors call it.

    ``max_unpacked`` bytes (default: 1 GiB or 100 times the archive's size,
    whichever is more) and ``max_members`` bound what it may unpack to.
    """
    folder = archive.with_name(archive.name + UNPACKED)
    if folder.is_dir():
        return folder
    limit = max_unpacked or max(MAX_UNPACKED, RATIO * archive.stat().st_size)
    private = Path(tempfile.mkdtemp(prefix=f".{archive.name}.", dir=archive.parent))
    try:
        _unpack(archive, _Folder(private, name, limit, max_members or MAX_MEMBERS))
        os.chmod(private, 0o700)
        try:
            os.rename(private, folder)
        except OSError:  # another process unpacked it first
            if not folder.is_dir():
                raise
    finally:
        shutil.rmtree(private, ignore_errors=True)
    return folder


def _unpack(archive: Path, into: "_Folder") -> None:
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zipped:
                members = zipped.infolist()
                into.expect(len(members), sum(member.file_size for member in members))
                for member in members:
                    if member.is_dir():
                        into.folder(member.filename)
                    else:
                        with zipped.open(member) as data:
                            into.file(member.filename, data, member.file_size, 0o600, None)
        else:
            with tarfile.open(archive) as tar:
                for member in tar:
                    _unpack_tar_member(tar, member, into)
        into.finish()
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError,
            ValueError) as err:  # damaged, cut short, encrypted; a path too long
        raise UserCodeError(f"archive {into.name!r} cannot be unpacked: {err}") from None


def _unpack_tar_member(tar: tarfile.TarFile, member: tarfile.TarInfo, into: "_Folder") -> None:
    if member.isdir():
        into.folder(member.name)
    elif member.isfile():
        with tar.extractfile(member) as data:
            into.file(member.name, data, member.size, 0o700 if member.mode & 0o100 else 0o600, member.mtime)
    elif member.issym():
        into.symlink(member.name, member.linkname)
    elif member.islnk():
        into.hard_link(member.name, member.linkname)
    else:
        raise UserCodeError(f"archive {into.name!r} holds {member.name!r}, which is neither a file, a folder"
                            " nor a link")


class _Folder:
    """A fresh private folder being filled with an archive's members, and a model of everything in it.

    ``kinds`` maps each path made (a tuple of names, links resolved) to
    "dir", "file" or ("link", its target): the folder holds nothing
    else, so resolving a path in the model is resolving it on disk.
    """

    def __init__(self, root: Path, name: str, max_unpacked: int, max_members: int) -> None:
        self.root, self.name = str(root), name
        self.max_unpacked, self.max_members = max_unpacked, max_members
        self.kinds = {(): "dir"}
        self.members = self.bytes = 0

    def expect(self, members: int, size: int) -> None:
        """Refuse at once an archive that says it holds too many members or bytes (a zip's directory)."""
        self._check(members, size)

    def folder(self, member: str) -> None:
        self._count(1, 0)
        place = self._place(member)
        kind = self.kinds.get(place)
        if kind is None:
            os.mkdir(self._path(place), 0o700)
            self.kinds[place] = "dir"
        elif kind != "dir":
            self._refuse(member, "a folder where the archive already put a file or a link")

    def file(self, member: str, data, size: int, mode: int, mtime) -> None:
        self._check(self.members, self.bytes + size)  # as the header says, before writing any of it
        place = self._made_room(member)
        path = self._path(place)
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode), "wb") as out:
            self.kinds[place] = "file"
            for block in iter(lambda: data.read(1 << 20), b""):
                self._count(0, len(block))  # as it comes: a header can lie
                out.write(block)
        if mtime is not None:
            os.utime(path, (mtime, mtime), follow_symlinks=False)

    def symlink(self, member: str, target: str) -> None:
        place = self._made_room(member)
        if target.startswith("/") or self._resolve(place[:-1], target, member) is None:
            self._refuse(member, f"a link to {target!r} outside its folder")
        os.symlink(target, self._path(place))
        self.kinds[place] = ("link", target)

    def hard_link(self, member: str, target: str) -> None:
        """A hard link: ``target`` is named from the archive's top, and must be a file the archive made."""
        source = None if target.startswith("/") else self._resolve((), target, member)
        if source is None or self.kinds.get(source) != "file":
            self._refuse(member, f"a link to {target!r}, which is no file of its folder")
        place = self._made_room(member)
        os.link(self._path(source), self._path(place), follow_symlinks=False)
        self.kinds[place] = "file"

    def finish(self) -> None:
        """Refuse the archive if any of its links leads outside now that every member is in place: a link
        checked when it was made can lead elsewhere once later members made its path's links."""
        for place, kind in self.kinds.items():
            if isinstance(kind, tuple) and self._resolve(place[:-1], kind[1], "/".join(place)) is None:
                self._refuse("/".join(place), f"a link to {kind[1]!r}, which leads outside its folder")

    def _made_room(self, member: str) -> tuple:
        """Where a file or link named ``member`` goes, its folders made and whatever stood there removed."""
        self._count(1, 0)
        place = self._place(member)
        if not place or self.kinds.get(place) == "dir":
            self._refuse(member, "a file or link where the archive already put a folder")
        if place in self.kinds:  # a later member of the same name replaces the earlier one, as tar does
            os.unlink(self._path(place))
            del self.kinds[place]
        return place

    def _place(self, member: str) -> tuple:
        """The resolved place of ``member`` (``()``: the folder itself), its folders made."""
        names = member.split("/")
        if member.startswith("/") or names[-1] == ".." or posixpath.normpath(member).split("/")[0] == "..":
            self._refuse(member, "which would land outside its folder")
        parent = self._resolve((), "/".join(names[:-1]), member)
        if parent is None:
            self._refuse(member, "which would land outside its folder")
        for depth in range(1, len(parent) + 1):
            kind = self.kinds.get(parent[:depth])
            if kind is None:
                os.mkdir(self._path(parent[:depth]), 0o700)
                self.kinds[parent[:depth]] = "dir"
            elif kind != "dir":
                self._refuse(member, "a path through a file")
        last = names[-1]
        return parent if last in ("", ".") else parent + (last,)

    def _resolve(self, start: tuple, path: str, member: str, depth: int = 0):
        """``path`` taken from the folder ``start`` (both resolved) as the kernel would, following the links
        the model holds; None if it leads outside the folder. A name not made yet is taken as a folder to be."""
        place = list(start)
        for name in path.split("/"):
            if name in ("", "."):
                continue
            if name == "..":
                if not place:
                    return None
                place.pop()
                continue
            kind = self.kinds.get(tuple(place) + (name,))
            if isinstance(kind, tuple):
                if depth >= _LINK_DEPTH:
                    self._refuse(member, f"a chain of more than {_LINK_DEPTH} links")
                if kind[1].startswith("/"):
                    return None
                found = self._resolve(tuple(place), kind[1], member, depth + 1)
                if found is None:
                    return None
                place = list(found)
            else:
                place.append(name)
        return tuple(place)

    def _count(self, members: int, size: int) -> None:
        self.members += members
        self.bytes += size
        self._check(self.members, self.bytes)

    def _check(self, members: int, size: int) -> None:
        if members > self.max_members:
            raise UserCodeError(f"archive {self.name!r} holds more than {self.max_members:,} members"
                                " (max_members); refused")
        if size > self.max_unpacked:
            raise UserCodeError(f"archive {self.name!r} unpacks to more than {self.max_unpacked:,} bytes"
                                " (max_unpacked); refused")

    def _path(self, place: tuple) -> str:
        return os.path.join(self.root, *place)

    def _refuse(self, member: str, why: str) -> None:
        raise UserCodeError(f"archive {self.name!r} holds {member!r}, {why}")
