"""Built-in reducers: name them like your own (``reduce(c, "reductio.reducers.sum", ...)``).

``sum`` is what most jobs reduce with (counts, totals), so reduce and map's
combiner recognise it and run it in a loop of their own (steps.sum_runs_into,
steps.sum_into) that gives the same output several times faster; this
function is what runs anywhere else, and what those loops must agree with.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Iterator

from reductio.errors import UserCodeError

SUM = "reductio.reducers.sum"


def sum(key: str, values: Iterable[str]) -> Iterator[tuple[str, str]]:  # noqa: A001 - the name users write
    """Yield ``(key, total)``: the values are whole numbers in decimal (``"1"``, ``"-20"``), the total too.

    A value is ASCII digits, optionally after one minus sign, of any length;
    anything else (``"+2"``, ``" 5"``, ``"1_000"``, ``"1.0"``, digits of other
    scripts, all of which Python's ``int`` takes) stops the step.
    """
    yield key, decimal(builtins.sum(integer(key, value) for value in values))


def integer(key: str, value: str) -> int:
    """``value`` as an int; anything else is one line naming the key and the value."""
    digits = value[1:] if value[:1] == "-" else value
    if not (digits.isdigit() and digits.isascii()):  # isdigit alone takes "４", "٣" and "²"
        raise UserCodeError(f"{SUM}: value {value[:40]!r} of key {key[:40]!r} is not a whole number"
                            " (ASCII digits, optionally after a minus)")
    try:
        return int(value)
    except ValueError:  # more digits than int_max_str_digits allows (4,300 by default): converted piece by piece
        number = 0
        for start in range(0, len(digits), _PIECE):
            piece = digits[start:start + _PIECE]
            number = number * 10 ** len(piece) + int(piece)
        return -number if value[:1] == "-" else number


def decimal(number: int) -> str:
    """``str(number)``, whatever its length (int_max_str_digits limits str too)."""
    try:
        return str(number)
    except ValueError:
        left, pieces = abs(number), []
        while left:
            left, piece = divmod(left, 10 ** _PIECE)
            pieces.append(str(piece).rjust(_PIECE, "0"))
        return ("-" if number < 0 else "") + "".join(reversed(pieces)).lstrip("0")


_PIECE = 500  # digits converted at once: below the lowest int_max_str_digits Python allows (640)
