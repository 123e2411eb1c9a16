"""The cluster key's forced command: a worker's key lets another worker deliver scatter files, nothing else.

``setup`` authorizes the cluster key on each SSH worker with ``restrict``
(no pty, no forwarding, no agent) and a ``command`` running ``PYTHON -I -m
reductio.gate HOME...``, HOME being every home of the cluster that this
user's authorized_keys file serves. sshd then runs this module for
whatever the connecting worker asked; the request is in
``SSH_ORIGINAL_COMMAND``, parsed here, never given to a shell. The only
request granted is the one scatter's sender makes (delivery.py):

    PYTHON -m reductio.worker receive '{"attempt": ..., "head": {...}, "home": HOME}'

with HOME one of the homes on the authorized line and every parameter well
formed; it runs in this process, with this interpreter. Anything else gets
one line on stderr, exit 1, and a line in the home's steps.log. Also the
worker-side half of authorizing the key (``step_authorize``). Standard
library only.
"""

from __future__ import annotations

import json
import os
import shlex
import sys

from reductio import steplog
from reductio.errors import ReductioError
from reductio.store import check_attempt

MAX_REQUEST = 64 << 10  # bytes: what scatter sends is a few hundred
COMMENT = "reductio-cluster"  # the cluster key's comment: how setup finds the lines it wrote earlier
_HEAD = {"beat": (int, float), "dead_after": (int, float), "stdin": str}


class Refused(ReductioError):
    """A request the cluster key may not make."""


def main(argv: list = None) -> int:
    homes = [_normal(home) for home in (sys.argv[1:] if argv is None else argv)]
    request = os.environ.get("SSH_ORIGINAL_COMMAND")
    try:
        params = _granted(request, homes)
    except Refused as err:
        print(f"reductio gate: refused: {err}", file=sys.stderr, flush=True)
        for home in homes:  # the account's homes: whichever one is looked at shows it
            steplog.log({"home": home}, f"gate refused a request from {_client()}: {err}")
        return 1
    from reductio import worker

    return worker.main(["receive", json.dumps(params)])


def _granted(request: str | None, homes: list) -> dict:
    """The receive step's parameters, if ``request`` is the one scatter sends into one of ``homes``."""
    if not homes:
        raise Refused("the authorized line names no home")
    if request is None:
        raise Refused("a login; the cluster key only delivers files")
    if len(request.encode("utf-8", "replace")) > MAX_REQUEST:
        raise Refused(f"a request longer than {MAX_REQUEST:,} bytes")
    try:
        words = shlex.split(request)
    except ValueError as err:
        raise Refused(f"a request that does not parse ({err})") from None
    if len(words) != 5 or words[1:4] != ["-m", "reductio.worker", "receive"]:
        raise Refused(f"not a receive: {request[:200]!r}")
    try:
        params = json.loads(words[4])
    except ValueError:
        raise Refused("parameters that are not JSON") from None
    if not isinstance(params, dict) or set(params) != {"attempt", "head", "home"}:
        raise Refused("parameters other than a receive's")
    if not isinstance(params["home"], str) or _normal(params["home"]) not in homes:
        raise Refused(f"a home this key does not serve: {str(params['home'])[:200]!r}")
    try:
        check_attempt(params["attempt"])
    except ReductioError as err:
        raise Refused(str(err)) from None
    head = params["head"]
    if not isinstance(head, dict) or set(head) != set(_HEAD) or head["stdin"] != "data" or not all(
            isinstance(head[key], kind) and not isinstance(head[key], bool) for key, kind in _HEAD.items()):
        raise Refused("heartbeat settings other than a receive's")
    return params


def _normal(home: str) -> str:
    return os.path.normpath(os.path.expanduser(home))


def _client() -> str:
    return (os.environ.get("SSH_CLIENT") or "?").split(" ")[0]


def step_authorize(params: dict) -> dict:
    """Put ``line`` into the authorized_keys file ``path`` in place of the lines it supersedes (``_supersedes``);
    other keys are left as they are. The file is rewritten atomically, keeping its mode."""
    path = os.path.expanduser(params["path"])
    line = params["line"]
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as existing:
            lines = existing.read().splitlines()
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        lines, mode = [], 0o600
    kept = [old for old in lines if not _supersedes(line, old)]
    partial = f"{path}.reductio-{os.getpid()}"
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(descriptor, "w", encoding="utf-8", errors="surrogateescape") as out:
        out.write("".join(old + "\n" for old in kept) + line + "\n")
    os.replace(partial, path)
    return {"replaced": len(lines) - len(kept)}


def _supersedes(line: str, old: str) -> bool:
    """True for an earlier line of the same key, of an earlier cluster key forced to the same homes
    (a rotated key), or of a cluster key with no restriction at all (what setup wrote before the gate)."""
    kind, key = line.split()[-3:-1]
    options = line[:line.rindex(f" {kind} ")]
    words = old.split()
    if key in words:
        return True
    if not words or words[-1] != COMMENT or old.lstrip().startswith("#"):
        return False
    return old.startswith(options + " ") or words[0].startswith(("ssh-", "ecdsa-", "sk-"))


def authorized_line(public: str, pythons: list, homes: list) -> str:
    """The authorized_keys line for the cluster key (``public``: type, key, comment), restricted and
    forced to this gate for ``homes``.

    ``pythons`` (each home's environment) and ``homes`` are already shell
    words. One authorized_keys file may serve several machines (a shared
    home), so the command runs the first environment this machine has.
    sshd runs it with the account's shell; a double quote in it is \\".
    """
    command = (f"for python in {' '.join(pythons)}; do test -x \"$python\" &&"
               f" exec \"$python\" -I -m reductio.gate {' '.join(homes)}; done;"
               " echo 'reductio gate: no reductio environment on this machine' >&2; exit 1")
    escaped = command.replace('"', '\\"')
    return f'restrict,command="{escaped}" {public}'


if __name__ == "__main__":
    sys.exit(main())
