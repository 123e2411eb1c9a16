"""The worker's half of authorizing the cluster key (``setup``): its line in an authorized_keys file,
restricted and forced to the gate (gate.py) for every home it serves. Standard library only.
"""

from __future__ import annotations

import fcntl
import os

from reductio.wire.layout import same_home
from reductio.wire.protocol import shell_path

COMMENT = "reductio-cluster"  # the cluster key's comment: how setup finds the lines it wrote earlier
# What the forced command runs, with ``python -I -S``: ``-m reductio.gate`` would import runpy and
# importlib.util first, and site its .pth files. Without site, the environment's site-packages is put on
# the path by hand: ENV/lib/*/site-packages, ENV being the venv whose bin/python this is; the folder is
# pythonX.Y for CPython, pypyX.Y for PyPy, so it is listed, not spelt. No double quote: the line quotes it.
GATE = ("import os, sys; lib = os.path.join(os.path.dirname(os.path.dirname(sys.executable)), 'lib');"
        " sys.path.extend(os.path.join(lib, name, 'site-packages') for name in sorted(os.listdir(lib)));"
        " from reductio.gate import main; sys.exit(main())")


def step_authorize(params: dict) -> dict:
    """Authorize the cluster key ``public`` in the authorized_keys file ``path`` for ``homes`` (each served by
    the environment in ``pythons`` beside it), or with no ``public`` revoke every cluster key for ``homes``.

    A key's line serves every home any setup authorized it for: its earlier
    lines' homes join the new one. Every other ``reductio-cluster`` line
    (an earlier, rotated key) loses these homes, and goes when none is left;
    one the gate cannot read (no restriction: before the gate) goes whole.
    ``homes`` None revokes every cluster line of the file. Other keys are
    left as they are; the file is rewritten atomically, keeping its mode.
    """
    path = os.path.expanduser(params["path"])
    public, homes = params.get("public"), params.get("homes")
    pairs = list(zip(params.get("pythons") or [], homes or []))
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    lock = os.open(os.path.dirname(path) or ".", os.O_RDONLY)  # two setups at once: one read-modify-write at a time
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as existing:
                lines = existing.read().splitlines()
            mode = os.stat(path).st_mode & 0o7777
        except FileNotFoundError:
            lines, mode = [], 0o600
        kept, merged = _reauthorized(lines, public, homes, pairs)
        if public:
            kept.append(authorized_line(public, [python for python, _ in merged], [home for _, home in merged]))
        partial = f"{path}.reductio-{os.getpid()}"
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        with os.fdopen(descriptor, "w", encoding="utf-8", errors="surrogateescape") as out:
            out.write("".join(line + "\n" for line in kept))
        os.replace(partial, path)
    finally:
        os.close(lock)
    return {"removed": len([line for line in lines if line not in kept]),
            "homes": [home for _, home in merged] if public else []}


def _reauthorized(lines: list, public: str | None, homes: list | None, pairs: list) -> tuple:
    """The lines to keep (the homes taken from other cluster keys' lines) and the (python, home) pairs the
    key ``public`` serves from now on: ``pairs`` first, then those its earlier lines served."""
    key = public.split()[1] if public else None
    taking = None if homes is None else {same_home(home) for home in homes}
    merged, seen = list(pairs), {same_home(home) for _, home in pairs}
    kept = []
    for line in lines:
        words = line.split()
        if not words or line.lstrip().startswith("#") or words[-1] != COMMENT:
            kept.append(line)  # not a cluster key's line: the user's own
            continue
        served = _served(line)
        if key is not None and key in words:  # this key's earlier line: its homes stay served
            for python, home in served or []:
                if same_home(home) not in seen:
                    merged.append((python, home))
                    seen.add(same_home(home))
        elif served is not None and taking is not None:
            left = [(python, home) for python, home in served if same_home(home) not in taking]
            if len(left) == len(served):
                kept.append(line)
            elif left:
                kept.append(authorized_line(" ".join(words[-3:]), [p for p, _ in left], [h for _, h in left]))
    return kept, merged


def _served(line: str) -> list | None:
    """The (python, home) pairs a cluster key's line written by authorized_line serves; None for any other."""
    import shlex

    start = line.find('command="')
    if start < 0:
        return None
    command = line[start + len('command="'):line.rfind('" ')].replace('\\"', '"')
    try:
        head, tail = command.split("; do ", 1)
        pythons = shlex.split(head.split(" in ", 1)[1])
        homes = shlex.split(tail.split(' -c "', 1)[1].split('"', 1)[1].split("; done;", 1)[0])
    except (IndexError, ValueError):
        return None
    if not homes or len(pythons) != len(homes):
        return None
    return [(_tilde(python), _tilde(home)) for python, home in zip(pythons, homes)]


def _tilde(word: str) -> str:
    """A path as written before shell_path quoted it: "$HOME" back to ~."""
    return "~" + word[len("$HOME"):] if word == "$HOME" or word.startswith("$HOME/") else word


def authorized_line(public: str, pythons: list, homes: list) -> str:
    """The authorized_keys line for the cluster key (``public``: type, key, comment), restricted and
    forced to this gate for ``homes``.

    ``pythons`` (each home's environment) and ``homes`` are paths, quoted
    here. One authorized_keys file may serve several machines (a shared
    home), so the command runs the first environment this machine has.
    sshd runs it with the account's shell; a double quote in it is \\".
    """
    command = (f"for python in {' '.join(shell_path(p) for p in pythons)}; do test -x \"$python\" &&"
               f" exec \"$python\" -I -S -c \"{GATE}\" {' '.join(shell_path(h) for h in homes)}; done;"
               " echo 'reductio gate: no reductio environment on this machine' >&2; exit 1")
    escaped = command.replace('"', '\\"')
    return f'restrict,command="{escaped}" {public}'

