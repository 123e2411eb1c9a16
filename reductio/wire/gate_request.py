"""What scatter's sender sends another worker's gate, as the sender writes it, the gate reads it and the head
plans it. The request, in ``SSH_ORIGINAL_COMMAND`` (never given to a shell):

    reductio-receive ATTEMPT DEAD_AFTER BYTES HOME

HOME is the rest of the line, spaces and all. Then on stdin, never on a
command line: the token line (the token the head gave that sender alone),
then framing.py's frames. The gate imports this on every scatter
connection: standard library only, and nothing costly (no json, re, shlex
or pathlib).
"""

from __future__ import annotations

from reductio.errors import DatasetError, ReductioError
from reductio.wire.layout import check_attempt

REQUEST = "reductio-receive"
TOKEN = b"token "  # a gate stream's first line: TOKEN, the sender's token (TOKEN_HEX hex digits), a newline
TOKEN_HEX = 64
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


def token_digest(token: str) -> str:
    """What a permit holds of a sender's token: its SHA-256, so the permit never holds the token itself."""
    import hashlib

    return hashlib.sha256(token.encode("ascii")).hexdigest()


def token_line(token: str) -> bytes:
    """The first line of a sender's stream to a gate: its token, which never goes on a command line."""
    if len(token) != TOKEN_HEX or not is_hex(token):
        raise DatasetError("a sender's token is 64 hex digits")
    return TOKEN + token.encode("ascii") + b"\n"


def is_hex(text: str) -> bool:
    """Lowercase hex digits only, as a token and a SHA-256 are written."""
    return text.isascii() and all(char in "0123456789abcdef" for char in text)
