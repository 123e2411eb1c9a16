"""User counters in a step's result: how a worker names them beside the built-in counters, and how counts are
added up. One place for both sides: a worker adds up its processes' counts, the head its workers'."""

from __future__ import annotations

from collections.abc import Iterable

PREFIX = "user: "  # "lines in" is reductio's; "user: lines in" is a counter the user's code incremented


def labelled(counts: dict[str, int]) -> dict[str, int]:
    """The user's ``counts`` as a step's result holds them."""
    return {PREFIX + name: count for name, count in counts.items()}


def totals(results_counters: Iterable[dict]) -> dict[str, int]:
    """The user counters of several step results' ``counters``, added up, by the names the user gave them."""
    added: dict[str, int] = {}
    for counters in results_counters:
        for key, value in counters.items():
            if key.startswith(PREFIX):
                added[key[len(PREFIX):]] = added.get(key[len(PREFIX):], 0) + value
    return added
