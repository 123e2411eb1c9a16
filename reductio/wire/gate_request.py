"""The one request the cluster key may make of another worker's gate, as scatter's sender writes it and the gate
reads it (``SSH_ORIGINAL_COMMAND``, never given to a shell):

    reductio-receive ATTEMPT DEAD_AFTER BYTES HOME

HOME is the rest of the line, spaces and all. The sender's token and files
follow on the connection's stdin, never on a command line. The gate imports
this on every scatter connection: standard library only, and nothing costly
(no json, re, shlex or pathlib).
"""

from __future__ import annotations

from reductio.errors import ReductioError
from reductio.wire.layout import check_attempt

REQUEST = "reductio-receive"
MAX_REQUEST = 64 << 10  # bytes: what scatter sends is a few hundred
MAX_DEAD_AFTER = 86400.0  # seconds: a day of silence is no scatter's


def request(attempt: str, dead_after: float, home: str, size: int = 0) -> str:
    """What scatter's sender asks of another worker's gate: to deliver ``size`` bytes into ``attempt``."""
    return f"{REQUEST} {attempt} {float(dead_after):g} {int(size)} {home}"


def read_request(asked: str, served) -> dict:
    """The receive's parameters from ``asked``, if it is the request above into a home ``served(home)`` accepts;
    else ValueError saying what is wrong with it."""
    if len(asked.encode("utf-8", "replace")) > MAX_REQUEST:
        raise ValueError(f"a request longer than {MAX_REQUEST:,} bytes")
    words = asked.split(" ", 4)
    if len(words) != 5 or words[0] != REQUEST:
        raise ValueError(f"not a receive: {asked[:200]!r}")
    _, attempt, dead_after, size, home = words
    if not served(home):
        raise ValueError(f"a home this key does not serve: {home[:200]!r}")
    try:
        check_attempt(attempt)
        seconds = float(dead_after)
    except (ReductioError, ValueError) as err:
        raise ValueError(str(err)[:200]) from None
    if not 0 < seconds <= MAX_DEAD_AFTER:  # also refuses nan and inf
        raise ValueError(f"a dead_after of {dead_after[:20]!r} seconds (at most {MAX_DEAD_AFTER:g})")
    if not (size.isdigit() and size.isascii() and len(size) <= 18):
        raise ValueError(f"a size of {size[:20]!r} bytes")
    return {"home": home, "attempt": attempt, "dead_after": seconds, "bytes": int(size)}
