"""The cluster key's forced command: a worker's key lets another worker deliver scatter files, nothing else.

``setup`` authorizes the cluster key on each SSH worker with ``restrict``
(no pty, no forwarding, no agent) and a ``command`` running this module's
``main`` with ``PYTHON -I -S`` for HOME..., HOME being every home that this
user's authorized_keys file serves the key for. sshd then runs this
module for whatever the connecting worker asked; the request is in
``SSH_ORIGINAL_COMMAND``, parsed here, never given to a shell. The only
request granted is the one scatter's sender makes (delivery.py):

    reductio-receive ATTEMPT DEAD_AFTER BYTES HOME

with HOME one of the homes on the authorized line (the rest of the line,
spaces and all), ATTEMPT an attempt id, DEAD_AFTER the seconds of silence
after which the sender counts as gone and BYTES what it says it will send
(a figure the gate does not go by). The stream on stdin is then received
(receiving.py) in this process, with this interpreter, and its result
written as ``python -m reductio.worker receive`` would: only into an
attempt this worker's running scatter step opened, with the permit the
head wrote through that step (tmp/ATTEMPT.gate/expect). The stream's
first line is its sender's token, which the head gave that sender alone:
the gate takes only the files the permit lists for that token, each at
most the size the head read from the sender's published marker, each kept
only if its bytes have that marker's SHA-256, each once per delivery, one
delivery per token at a time, with at most MAX_SESSIONS gates at once per
home. Anything else (another sender's token or none, a file of another
sender or of no sender, more bytes, other bytes) gets one line on stderr,
exit 1, and a line in the home's logs/gate.log, which stops growing when
full rather than rotating earlier lines away (steplog.py).

Every scatter connection starts this module, N x (N - 1) per scatter, so
it and what it imports keep clear of json, re, shlex and pathlib: their
imports would cost more than the receive. Also the worker-side half of
authorizing the key (``step_authorize``). Standard library only.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
import time

from reductio.errors import ReductioError, disk_full
from reductio.wire.layout import LOGS, check_attempt, check_home, finished
from reductio.worker import receiving, steplog

MAX_REQUEST = 64 << 10  # bytes: what scatter sends is a few hundred
MAX_DEAD_AFTER = 86400.0  # seconds: a day of silence is no scatter's
MAX_SESSIONS = 128  # gates at once per home: a receiver serves each other worker once at a time
COMMENT = "reductio-cluster"  # the cluster key's comment: how setup finds the lines it wrote earlier
REQUEST = "reductio-receive"
# What the forced command runs, with ``python -I -S``: ``-m reductio.gate`` would import runpy and
# importlib.util first, and site its .pth files. Without site, the environment's site-packages is put on
# the path by hand: ENV/lib/*/site-packages, ENV being the venv whose bin/python this is; the folder is
# pythonX.Y for CPython, pypyX.Y for PyPy, so it is listed, not spelt. No double quote: the line quotes it.
GATE = ("import os, sys; lib = os.path.join(os.path.dirname(os.path.dirname(sys.executable)), 'lib');"
        " sys.path.extend(os.path.join(lib, name, 'site-packages') for name in sorted(os.listdir(lib)));"
        " from reductio.gate import main; sys.exit(main())")


class Refused(ReductioError):
    """A request the cluster key may not make."""


def request(attempt: str, dead_after: float, home: str, size: int = 0) -> str:
    """What scatter's sender asks of another worker's gate: to deliver ``size`` bytes into ``attempt``; its
    token and files follow on the connection's stdin, never on a command line."""
    return f"{REQUEST} {attempt} {float(dead_after):g} {int(size)} {home}"


def main(argv: list = None) -> int:
    homes = [_normal(home) for home in (sys.argv[1:] if argv is None else argv)]
    asked = os.environ.get("SSH_ORIGINAL_COMMAND")
    try:
        params = _granted(asked, homes)
        _take_session(params["home"])
    except Refused as err:
        print(f"reductio gate: refused: {err}", file=sys.stderr, flush=True)
        for home in homes:  # the account's homes: whichever one is looked at shows it
            steplog.refused({"home": home}, f"gate refused a request from {_client()}: {err}")
        return 1
    return _receive(params)


def _granted(asked: str | None, homes: list) -> dict:
    """The receive's parameters, if ``asked`` is the request scatter sends into one of ``homes``."""
    if not homes:
        raise Refused("the authorized line names no home")
    if asked is None:
        raise Refused("a login; the cluster key only delivers files")
    if len(asked.encode("utf-8", "replace")) > MAX_REQUEST:
        raise Refused(f"a request longer than {MAX_REQUEST:,} bytes")
    words = asked.split(" ", 4)
    if len(words) != 5 or words[0] != REQUEST:
        raise Refused(f"not a receive: {asked[:200]!r}")
    _, attempt, dead_after, size, home = words
    if _normal(home) not in homes:
        raise Refused(f"a home this key does not serve: {home[:200]!r}")
    try:
        check_attempt(attempt)
        seconds = float(dead_after)
    except (ReductioError, ValueError) as err:
        raise Refused(str(err)[:200]) from None
    if not 0 < seconds <= MAX_DEAD_AFTER:  # also refuses nan and inf
        raise Refused(f"a dead_after of {dead_after[:20]!r} seconds (at most {MAX_DEAD_AFTER:g})")
    if not (size.isdigit() and size.isascii() and len(size) <= 18):
        raise Refused(f"a size of {size[:20]!r} bytes")
    return {"home": home, "attempt": attempt, "dead_after": seconds, "bytes": int(size)}


_SESSION = []


def _take_session(home: str) -> None:
    """Hold one of the home's MAX_SESSIONS gate places for the rest of this process, or refuse."""
    try:
        folder = os.path.join(check_home(home), LOGS, "gate-sessions")
        try:
            os.makedirs(folder, 0o700)
        except FileExistsError:
            pass
        first = os.getpid() % MAX_SESSIONS  # gates started together try different places first
        for place in range(MAX_SESSIONS):
            path = os.path.join(folder, str((first + place) % MAX_SESSIONS))
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(descriptor)
                continue
            _SESSION.append(descriptor)
            return
    except (ReductioError, OSError) as err:
        raise Refused(f"no reductio home here: {getattr(err, 'strerror', None) or err}") from None
    raise Refused(f"{MAX_SESSIONS} gates already receive into this home")


def _receive(params: dict) -> int:
    """Run the granted receive and report it as a worker command does (worker.py), without importing json
    unless there is an error to report. A refusal or failure is logged in gate.log, never steps.log."""
    os.umask(0o077)  # everything in a reductio home is its owner's alone
    started = time.time()
    try:
        try:
            files = receiving.receive_expected(params["home"], params["attempt"], params["dead_after"])["files"]
        except OSError as err:  # one line to the key holder, without the home's path
            reason = (disk_full(quota=err.errno == errno.EDQUOT) if err.errno in (errno.ENOSPC, errno.EDQUOT)
                      else err.strerror)
            raise ReductioError(f"cannot receive: {reason}", f"{err}") from err
    except ReductioError as err:
        from reductio.wire.protocol import ERROR, emit

        emit(ERROR, dict(err.to_dict(), details=""))  # the details (paths) stay in this home's log
        steplog.refused(params, f"gate receive from {_client()} failed after {time.time() - started:.1f} s:"
                                f" {err} {err.details or ''}".rstrip())
        return 1
    finished(params["home"], params["attempt"])
    sys.stderr.write(result_line(files))
    sys.stderr.flush()
    steplog.log(params, f"receive done in {time.time() - started:.1f} s")
    return 0


def result_line(files: dict) -> str:
    """The receive's ``reductio-result`` line (protocol.py) as json.dumps writes it: file names are letters,
    digits, '_', '.' and '-' (framing.py), digests hex, so nothing needs escaping."""
    entries = ", ".join(
        f'"{name}": {{"bytes": {facts["bytes"]}, "lines": {facts["lines"]}, "sha256": "{facts["sha256"]}",'
        f' "sorted": {"true" if facts["sorted"] else "false"}}}' for name, facts in files.items())
    return f'reductio-result: {{"files": {{{entries}}}}}\n'


def _normal(home: str) -> str:
    return os.path.normpath(os.path.expanduser(home))


def _client() -> str:
    return (os.environ.get("SSH_CLIENT") or "?").split(" ")[0]


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
    taking = None if homes is None else {_normal(home) for home in homes}
    merged, seen = list(pairs), {_normal(home) for _, home in pairs}
    kept = []
    for line in lines:
        words = line.split()
        if not words or line.lstrip().startswith("#") or words[-1] != COMMENT:
            kept.append(line)  # not a cluster key's line: the user's own
            continue
        served = _served(line)
        if key is not None and key in words:  # this key's earlier line: its homes stay served
            for python, home in served or []:
                if _normal(home) not in seen:
                    merged.append((python, home))
                    seen.add(_normal(home))
        elif served is not None and taking is not None:
            left = [(python, home) for python, home in served if _normal(home) not in taking]
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
    from reductio.wire.protocol import shell_path

    command = (f"for python in {' '.join(shell_path(p) for p in pythons)}; do test -x \"$python\" &&"
               f" exec \"$python\" -I -S -c \"{GATE}\" {' '.join(shell_path(h) for h in homes)}; done;"
               " echo 'reductio gate: no reductio environment on this machine' >&2; exit 1")
    escaped = command.replace('"', '\\"')
    return f'restrict,command="{escaped}" {public}'


if __name__ == "__main__":
    sys.exit(main())
