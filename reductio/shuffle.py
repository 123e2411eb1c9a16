"""The head's half of ``scatter``: each worker sends partition i straight to worker i.

The head only tells every worker where each partition goes, relays the
few files an SSH worker cannot deliver to a local one, and publishes what
arrived everywhere or nowhere.
"""

from __future__ import annotations

from typing import Dict

from reductio.errors import DatasetError
from reductio.feedback import display
from reductio.job import common_source, discard, new_attempt, publish


def scatter(cluster, source: str, target: str, facts: dict) -> Dict[str, dict]:
    """Move every partition of ``source`` to its owner as ``target``; per-worker counters."""
    attempt = new_attempt()
    try:
        with display("scatter", cluster) as progress:
            results = cluster.each("scatter", progress.reporting(lambda w, on_progress: w.step(
                "send", {"attempt": attempt, "source": source, "destinations": destinations(cluster, w),
                         "self": w.index}, on_progress)))
        if common_source(results, source)["attempt"] != facts["source_attempt"]:
            raise DatasetError(f"dataset {source!r} changed while scatter was reading it; run it again")
        arrived = {w.name: {} for w in cluster.workers}
        sent = {w.name: {} for w in cluster.workers}
        for sender, result in results.items():
            for index, files in result["sent"].items():
                arrived[cluster.workers[int(index)].name].update(files)
                sent[sender].update(files)
        relaying = [w for w in cluster.workers if results[w.name]["relay"]]
        relayed = cluster.each("scatter (relay)",
                               lambda w: _relay(cluster, w, source, attempt, results[w.name]["relay"]), relaying)
        for sender, files_by_worker in relayed.items():
            for name, files in files_by_worker.items():
                arrived[name].update(files)
                sent[sender].update(files)
        publish(cluster, attempt, target, arrived, facts, "scatter")
    except BaseException:
        discard(cluster, attempt)
        raise
    return {w.name: {"counters": {
        "lines out": _sum(sent[w.name], "lines"), "bytes out": _sum(sent[w.name], "bytes"),
        "lines in": _sum(arrived[w.name], "lines"), "bytes in": _sum(arrived[w.name], "bytes"),
        "bytes crossed": _sum(sent[w.name], "bytes") - _sum(results[w.name]["sent"].get(str(w.index), {}), "bytes"),
        **results[w.name]["clock"],
    }} for w in cluster.workers}


def _sum(files: dict, fact: str) -> int:
    return sum(entry[fact] for entry in files.values())


def destinations(cluster, sender) -> list:
    """Where ``sender`` sends each partition: an SSH worker cannot reach a local one, so the head relays."""
    return [
        {"kind": "relay"} if (w.is_local and not sender.is_local) else w.destination()
        for w in cluster.workers
    ]


def _relay(cluster, sender, source: str, attempt: str, relay: dict) -> dict:
    """Carry files from an SSH worker to local workers through the head, streaming."""
    received = {}
    for index, files in relay.items():
        destination = cluster.workers[int(index)]
        for name, expected in files.items():
            incoming = sender.open("read", {"source": source, "name": name}, "r")
            outgoing = destination.open("receive", {"attempt": attempt, "name": name, "expected": expected}, "w")
            try:
                for block in iter(lambda: incoming.read(1 << 20), b""):
                    outgoing.write(block)
            except BaseException:
                incoming.kill()
                outgoing.kill()
                raise
            incoming.finish()
            received.setdefault(destination.name, {}).update(outgoing.finish()["files"])
    return received
