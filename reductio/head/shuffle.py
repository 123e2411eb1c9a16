"""The head's half of ``scatter``: each worker sends partition i straight to worker i.

The head only tells every worker where each partition goes (each sender
then opens one connection per destination, a few at a time: delivery.py),
relays the few files an SSH worker cannot deliver to a local one, and
publishes what arrived everywhere or nowhere.

Before any sender starts, the head has every sender's published marker
from its survey (the version it saw): each file's size and SHA-256. Each sender
gets a random token of its own on its stdin; each receiver's step opens
its attempt with a permit naming, per other sender, that token's SHA-256
and the files it sends there (receiving.py), so a receiver's gate takes
from the cluster key nothing but what the head planned. What is published
is the plan's files, each checked against the plan's SHA-256.
"""

from __future__ import annotations

import secrets
from typing import Dict

from reductio.errors import DatasetError
from reductio.head.config import settings
from reductio.head.feedback import display
from reductio.head.job import common_source, discard, new_attempt, publish
from reductio.wire import framing
from reductio.wire.datasets import total
from reductio.wire.gate_request import TOKEN_HEX, token_digest
from reductio.wire.partition import partition_of_file


def scatter(cluster, source: str, target: str, facts: dict, checks: Dict[str, dict]) -> Dict[str, dict]:
    """Move every partition of ``source`` to its owner as ``target``; per-worker counters. ``checks`` are the
    workers' answers to the survey, made with ``source_files`` (job.Survey)."""
    plan = _plan(checks)
    tokens = {w.name: secrets.token_hex(TOKEN_HEX // 2) for w in cluster.workers}
    attempt = new_attempt()
    held = {}
    try:
        with display("scatter", cluster) as progress:
            # not progress.reporting: a worker done sending still receives, so its part ends with the step's,
            # and until then its held command's beats say it is there (or, missing, that it is quiet)
            results = cluster.each("scatter", lambda w: w.step(
                "send", dict(send_params(cluster, w, source), attempt=attempt, source_attempt=facts["source_attempt"],
                             gate_token=tokens[w.name], permit=permit(cluster, w, plan, tokens)),
                progress.progress_of(w.name), held))
        if common_source(results, source)["attempt"] != facts["source_attempt"]:
            raise DatasetError(f"dataset {source!r} changed while scatter was reading it; run it again")
        relaying = [w for w in cluster.workers if results[w.name]["relay"]]
        relayed = cluster.each("scatter (relay)", lambda w: _relay(
            cluster, w, source, facts["source_attempt"], attempt,
            {index: {name: plan[w.name][name] for name in files} for index, files in results[w.name]["relay"].items()}),
            relaying)
        delivered = {w.name: {} for w in cluster.workers}
        for sender, result in results.items():
            for files in [*result["sent"].values(), *relayed.get(sender, {}).values()]:
                delivered[sender].update(files)
        _check_delivered(plan, delivered)
        arrived = {w.name: {} for w in cluster.workers}
        for files in plan.values():
            for name, expected in files.items():
                arrived[cluster.workers[partition_of_file(name)].name][name] = expected
        publish(cluster, attempt, target, arrived, facts, "scatter", held)
    except BaseException:
        discard(cluster, attempt, held)
        raise
    return {w.name: {"counters": {
        "lines out": total(plan[w.name].values(), "lines"), "bytes out": total(plan[w.name].values(), "bytes"),
        "lines in": total(arrived[w.name].values(), "lines"), "bytes in": total(arrived[w.name].values(), "bytes"),
        "bytes crossed": (total(plan[w.name].values(), "bytes")
                          - total(results[w.name]["sent"].get(str(w.index), {}).values(), "bytes")),
        "connections": results[w.name]["connections"],
        **results[w.name]["clock"],
    }} for w in cluster.workers}


def _plan(checks: Dict[str, dict]) -> Dict[str, dict]:
    """Per sender, the files of its partitions (name: facts) in the version its survey saw, from its marker."""
    plan = {}
    for name, check in checks.items():
        found = check["source"] or {}
        if "files" not in found:
            raise DatasetError(f"{name} runs an older reductio, which cannot say what it will send; run setup")
        plan[name] = {file: facts for file, facts in found["files"].items() if partition_of_file(file) is not None}
    return plan


def permit(cluster, receiver, plan: Dict[str, dict], tokens: Dict[str, str]) -> list:
    """What ``receiver``'s gate may take: per other sender, its token's SHA-256 and each file it sends there."""
    return [[token_digest(tokens[sender]), name, facts["bytes"], facts["sha256"]]
            for sender, files in plan.items() if sender != receiver.name
            for name, facts in files.items() if partition_of_file(name) == receiver.index]


def _check_delivered(plan: Dict[str, dict], delivered: Dict[str, dict]) -> None:
    """Every sender delivered exactly the files of its plan, with the plan's sizes and SHA-256."""
    for sender, files in plan.items():
        said = {name: (facts["bytes"], facts["sha256"]) for name, facts in delivered[sender].items()}
        if said != {name: (facts["bytes"], facts["sha256"]) for name, facts in files.items()}:
            raise DatasetError(f"{sender} delivered other files than its marker lists; run scatter again")


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


def _relay(cluster, sender, source: str, source_attempt: str, attempt: str, relay: dict) -> dict:
    """Carry files from an SSH worker to local workers through the head, streaming: one stream per destination,
    read from the version of ``source`` the senders read (the survey's)."""
    received = {}
    for index, files in relay.items():
        destination = cluster.workers[int(index)]
        outgoing = destination.open("receive", {"attempt": attempt}, "w")
        try:
            for name, expected in files.items():
                outgoing.write(framing.file_header(name, expected["bytes"]))
                incoming = sender.open("read", {"source": source, "source_attempt": source_attempt,
                                                "name": name}, "r")
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
