"""What this run of the suite made, so that it finds, ends and removes only that.

Other people's jobs share the machine: a process whose command line holds
``reductio.worker session`` may be anyone's, and so may a network namespace
named ``rdx...``. A process is this run's when it descends from the test
process (local workers, the sshds of tests/sshd.py and every session they
start), or when its environment holds this run's token (a pipeline's process
that outlived its parent and went to init; sshd gives its sessions an
environment of their own, so those are found as descendants). Namespaces carry
``TAG``, this run's token, in their names.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Callable, Dict, Optional

VARIABLE = "REDUCTIO_TEST_RUN"
TAG = secrets.token_hex(4)  # 8 characters: a veth's name "rdx{TAG}v{i}" stays within Linux's 15
os.environ[VARIABLE] = TAG  # set once, before any test starts a process: every child inherits it
_MARK = f"{VARIABLE}={TAG}".encode()


def _parent(pid: int) -> Optional[int]:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # it ended meanwhile
        return None
    return int(stat.rpartition(")")[2].split()[1])  # the command's name in (...) may hold spaces


def is_ours(pid: int) -> bool:
    """Whether ``pid`` descends from the test process or carries this run's token in its environment."""
    me, ancestor = os.getpid(), pid
    while ancestor and ancestor != 1:
        ancestor = _parent(ancestor)
        if ancestor == me:
            return True
    try:
        return _MARK in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:  # ended meanwhile, or not ours to read
        return False


def _own(match: Callable[[Path], Optional[str]]) -> Dict[int, str]:
    """pid -> what ``match`` read of each process of this run (other than the test process) it matched."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                seen = match(entry)
            except OSError:  # it ended meanwhile
                continue
            if seen is not None and is_ours(int(entry.name)):
                found[int(entry.name)] = seen
    return found


def command_line(entry: Path) -> str:
    return (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")


def processes_with(text: str) -> Dict[int, str]:
    """pid -> command line of every process of this run whose command line holds ``text``."""
    def match(entry: Path) -> Optional[str]:
        command = command_line(entry)
        return command if text in command else None

    return _own(match)


def processes_named(*names: str) -> Dict[int, str]:
    """pid -> command line of every process of this run whose program is one of ``names`` (``sort``, ``ssh``:
    /proc's comm, so ``sshd`` is not ``ssh`` and ``python -m reductio.worker sort`` is not ``sort``)."""
    return _own(lambda entry: command_line(entry) if (entry / "comm").read_text().strip() in names else None)


def held_paths(pid="self") -> list:
    """The paths process ``pid`` holds open (files, and folders it locks), read from /proc; [] once it ended."""
    try:
        descriptors = os.listdir(f"/proc/{pid}/fd")
    except OSError:  # it ended meanwhile
        return []
    paths = []
    for descriptor in descriptors:
        try:
            paths.append(os.readlink(f"/proc/{pid}/fd/{descriptor}"))
        except OSError:  # closed meanwhile
            continue
    return paths


def holds(pid, prefix: str) -> bool:
    """Whether process ``pid`` holds open a path starting with ``prefix`` (a folder of a home, a store version)."""
    return any(path.startswith(prefix) for path in held_paths(pid))


def still_running(text: str, within: float) -> dict:
    """This run's processes whose command line holds ``text`` after ``within`` seconds: a killed process group
    takes a moment to go."""
    deadline = time.monotonic() + within
    while True:
        left = processes_with(text)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)
