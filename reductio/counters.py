"""Counters your mappers and reducers can increment, like Hadoop's and mrjob's.

    from reductio.counters import increment

    def words(key, value):
        for word in value.split():
            if not word.isalpha():
                increment("skipped words")
                continue
            yield word, "1"

Each worker process keeps its own counts; the head sums them over the
workers and prints them with the step's built-in counters.
"""

from __future__ import annotations

_counts: dict[str, int] = {}


def increment(name: str, amount: int = 1) -> None:
    """Add ``amount`` to the counter called ``name``."""
    if not isinstance(name, str) or not isinstance(amount, int):
        raise TypeError("increment(name: str, amount: int = 1)")
    _counts[name] = _counts.get(name, 0) + amount


def snapshot() -> dict[str, int]:
    """The counts so far in this process."""
    return dict(_counts)
