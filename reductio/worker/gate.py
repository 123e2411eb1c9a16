"""The cluster key's forced command: a worker's key lets another worker deliver scatter files, nothing else.

``setup`` authorizes the cluster key on each SSH worker with ``restrict``
(no pty, no forwarding, no agent) and a ``command`` running this module's
``main`` with ``PYTHON -I -S`` for HOME..., HOME being every home that this
user's authorized_keys file serves the key for (authorized_keys.py). sshd
then runs this module for whatever the connecting worker asked; the request
is in ``SSH_ORIGINAL_COMMAND``, read by gate_request.py, never given to a
shell. The only request granted is the one scatter's sender makes
(delivery.py), ``reductio-receive ATTEMPT DEAD_AFTER BYTES HOME``,
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
imports would cost more than the receive. Standard library only.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
import time

from reductio.errors import ReductioError, disk_full
from reductio.wire.gate_request import read_request
from reductio.wire.layout import LOGS, check_home, finished, same_home
from reductio.worker import receiving, steplog

MAX_SESSIONS = 128  # gates at once per home: a receiver serves each other worker once at a time


class Refused(ReductioError):
    """A request the cluster key may not make."""


def main(argv: list = None) -> int:
    homes = [same_home(home) for home in (sys.argv[1:] if argv is None else argv)]
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
    try:
        return read_request(asked, lambda home: same_home(home) in homes)
    except ValueError as err:
        raise Refused(str(err)) from None


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



def _client() -> str:
    return (os.environ.get("SSH_CLIENT") or "?").split(" ")[0]


if __name__ == "__main__":
    sys.exit(main())
