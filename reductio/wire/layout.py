"""Where things live in a worker's home, as plain strings: the folders, attempt ids, an attempt's folder.

Layout, the only place it is spelled out::

    HOME/data/NAME     -> ../store/NAME.ATTEMPT   symlink: the published dataset
    HOME/store/NAME.ATTEMPT/                      its files and its _SUCCESS marker
    HOME/tmp/ATTEMPT/                             a step's output until it is published
    HOME/tmp/ATTEMPT.gate/                        while a scatter step runs: its attempt is open to senders
    HOME/logs/steps.log                           one line per step the worker ran (steplog.py)
    HOME/cluster_key, HOME/known_hosts            how this worker reaches the others (scatter)
    HOME/venv/, HOME/dist/                        an SSH worker's Python environment and sdists
    HOME/shipped/SHA256                           a file shipped with a command step, named by its content
    HOME/shipped/SHA256.size                      its size, written once it arrived whole (packaging.push)
    HOME/shipped/SHA256.unpacked/                 that file unpacked, when it was shipped as an archive
    HOME/bin/python3, HOME/bin/python             links to a local worker's Python when its folder's python3
                                                  is another (python = pypy3): first on a command's PATH

What publishing does with them is store.py's. This module imports nothing
but ``os`` and ``fcntl``: scatter's gate (gate.py) uses it on every
connection, and a regular expression or pathlib would cost more than
the gate's own work. Standard library only.
"""

from __future__ import annotations

import fcntl
import os

from reductio.errors import DatasetError

DATA, STORE, TMP, SHIPPED, LOGS = "data", "store", "tmp", "shipped", "logs"
BIN = "bin"  # streaming.py
GATE_OPENING = ".gate"  # tmp/ATTEMPT.gate/ (receiving.py); no attempt id holds a '.'
WHOLE = ".size"  # beside a shipped file: its size, written only once it arrived whole
CLUSTER_KEY = "cluster_key"
KNOWN_HOSTS = "known_hosts"

_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_ATTEMPT_CHARS = _ALNUM | {"-"}
_FILE_CHARS = _ALNUM | {"_", ".", "-"}


def check_attempt(attempt: str) -> str:
    """Refuse an attempt id that is not one of ours: 1-100 ASCII letters, digits and '-', not starting with '-'."""
    if (not isinstance(attempt, str) or not 0 < len(attempt) <= 100 or attempt[0] not in _ALNUM
            or not _ATTEMPT_CHARS.issuperset(attempt)):
        raise DatasetError(f"bad attempt id {attempt!r}")
    return attempt


def check_file_name(name: str) -> str:
    """A data file's name: letters, digits, '_', '.' and '-', not starting with '.', so it stays in its folder
    and a frame header (framing.py) never needs quoting."""
    if (not isinstance(name, str) or not 0 < len(name) <= 255 or name.startswith(".")
            or not _FILE_CHARS.issuperset(name)):
        raise DatasetError(f"bad file name {name!r}")
    return name


def same_home(home: str) -> str:
    """A home as one spelling for comparing: ``~`` expanded, ``//`` and a trailing ``/`` gone, as an
    authorized line and a sender's request may write one home differently."""
    return os.path.normpath(os.path.expanduser(home))


def check_home(root: str) -> str:
    """The home folder, its ``~`` expanded; a folder that is no reductio home is a DatasetError."""
    root = os.path.expanduser(os.fspath(root))
    if not os.path.isdir(os.path.join(root, DATA)):
        raise DatasetError(f"no reductio home at {root}; run the setup task first")
    return root


def attempt_folder(root: str, attempt: str) -> str:
    """The private folder of one attempt at a step, created on first use.

    This process holds a shared lock on it until it exits, so ``clean``
    never removes the folder of a step that is still running.
    """
    folder = os.path.join(check_home(root), TMP, check_attempt(attempt))
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass
    hold_lock(folder)
    return folder


def finished(root: str, attempt: str) -> None:
    """Mark an attempt's run as done just now: the age ``clean`` counts from."""
    os.utime(os.path.join(os.path.expanduser(os.fspath(root)), TMP, check_attempt(attempt)))


_HELD = []


def hold_lock(folder) -> None:
    """Take a shared lock on a folder for the rest of this process."""
    descriptor = os.open(folder, os.O_RDONLY)
    fcntl.flock(descriptor, fcntl.LOCK_SH)
    _HELD.append(descriptor)


def shipped_whole(root: str, digest: str) -> bool:
    """True if ``HOME/shipped/DIGEST`` arrived whole: its WHOLE marker names its size. Without one (a push cut
    short, or made by a reductio that kept whatever arrived), the file counts as missing and is sent again."""
    path = os.path.join(os.path.expanduser(os.fspath(root)), SHIPPED, digest)
    try:
        with open(path + WHOLE, encoding="ascii") as marker:
            return int(marker.read()) == os.stat(path).st_size
    except (OSError, ValueError):
        return False
