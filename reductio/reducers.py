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
    """Yield ``(key, total)``: the values are whole numbers in decimal (``"1"``, ``"-20"``), the total too."""
    yield key, str(builtins.sum(integer(key, value) for value in values))


def integer(key: str, value: str) -> int:
    """``value`` as an int; anything else is one line naming the key and the value."""
    try:
        return int(value)
    except ValueError:
        raise UserCodeError(f"{SUM}: value {value[:40]!r} of key {key[:40]!r} is not a whole number") from None
