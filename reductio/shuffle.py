"""The head's half of ``scatter``: each worker sends partition i straight to worker i.

The head only tells every worker where each partition goes (each sender
then opens one connection per destination, a few at a time: delivery.py),
relays the few files an SSH worker cannot deliver to a local one, and
publishes what arrived everywhere or nowhere.
"""

from __future__ import annotations

from typing import Dict

from reductio import framing
from reductio.config import settings
from reductio.datasets import total
from reductio.errors import DatasetError
from reductio.feedback import display
from reductio.job import common_source, discard, new_attempt, publish


def scatter(cluster, source: str, target: str, facts: dict) -> Dict[str, dict]:
    """Move every partition of ``source`` to its owner as ``target``; per-worker counters."""
    attempt = new_attempt()
    held = {}
    try:
        with display("scatter", cluster) as progress:
            # not progress.reporting: a worker done sending still receives, so its part ends with the step's,
            # and until then its held command's beats say it is there (or, missing, that it is quiet)
            results = cluster.each("scatter", lambda w: w.step(
                "send", dict(send_params(cluster, w, source), attempt=attempt), progress.progress_of(w.name), held))
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
        publish(cluster, attempt, target, arrived, facts, "scatter", held)
    except BaseException:
        discard(cluster, attempt, held)
        raise
    return {w.name: {"counters": {
        "lines out": total(sent[w.name].values(), "lines"), "bytes out": total(sent[w.name].values(), "bytes"),
        "lines in": total(arrived[w.name].values(), "lines"), "bytes in": total(arrived[w.name].values(), "bytes"),
        "bytes crossed": (total(sent[w.name].values(), "bytes")
                          - total(results[w.name]["sent"].get(str(w.index), {}).values(), "bytes")),
        "connections": results[w.name]["connections"],
        **results[w.name]["clock"],
    }} for w in cluster.workers}


def send_params(cluster, sender, source: str) -> dict:
    """What ``sender``'s send step needs, but the attempt: where each partition goes, and how to send."""
    found = settings(cluster.config)
    return {"source": source, "destinations": destinations(cluster, sender), "self": sender.index,
            "streams": found.get("scatter_streams"), "sharing": cluster.sharing(sender),
            "retries": found.get("retries", 3), "retry_delay": found.get("retry_delay", 1.0)}


def destinations(cluster, sender) -> list:
    """Where ``sender`` sends each partition: an SSH worker cannot reach a local one, so the head relays."""
    return [
        {"kind": "relay"} if (w.is_local and not sender.is_local) else w.destination()
        for w in cluster.workers
    ]


def _relay(cluster, sender, source: str, attempt: str, relay: dict) -> dict:
    """Carry files from an SSH worker to local workers through the head, streaming: one stream per destination."""
    received = {}
    for index, files in relay.items():
        destination = cluster.workers[int(index)]
        outgoing = destination.open("receive", {"attempt": attempt}, "w")
        try:
            for name, expected in files.items():
                outgoing.write(framing.file_header(name, expected["bytes"]))
                incoming = sender.open("read", {"source": source, "name": name}, "r")
                try:
                    copied = 0
                    for block in iter(lambda incoming=incoming: incoming.read(1 << 20), b""):
                        outgoing.write(block)
                        copied += len(block)
                    incoming.finish()
                finally:
                    incoming.kill()
                if copied != expected["bytes"]:
                    raise DatasetError(f"{name} came from {sender.name} {copied:,} of {expected['bytes']:,} bytes long")
                outgoing.write(framing.end_header(name, expected))
        except BaseException:
            outgoing.kill()
            raise
        received[destination.name] = outgoing.finish()["files"]
    return received
