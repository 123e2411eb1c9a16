"""The head's half of each step: fan out, check, then publish everywhere or nowhere.

Every step writes into a fresh attempt folder on each worker. Only when all
workers succeeded does the head tell each one to publish -- in the step's
own session, which waits for that verdict after its result, so a step
costs a check and one session per worker; if any failed, every worker
discards the attempt, so a target is never half made.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Callable, Dict

from reductio.cluster import Cluster
from reductio.transport import Command
from reductio.errors import DatasetError, WorkerUnreachable
from reductio.feedback import display


def new_attempt() -> str:
    """A fresh attempt id: sortable by time, unique across heads."""
    return time.strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(4)


class Survey:
    """What every worker says before a step: its target's marker, its source's version, the code,
    the shipped files it lacks (``shipped``: their digests)."""

    def __init__(self, cluster: Cluster, what: str, target: str, source: str = None, functions=(), shipped=()):
        params = {"target": target, "source": source, "functions": list(functions), "shipped": list(shipped)}
        self.checks = cluster.each(f"{what} (check)", lambda w: w.step("check", params))
        self.source = common_source(self.checks, source) if source else None
        codes = {check["code"] for check in self.checks.values()}
        if len(codes) > 1:
            raise DatasetError(f"workers run different versions of {', '.join(functions)}; run distribute")
        self.code = codes.pop() if codes else None

    def current(self, facts: dict) -> bool:
        """True if every worker holds one version of the target, made with exactly ``facts``."""
        markers = [check["target"] for check in self.checks.values()]
        if not markers or any(marker is None for marker in markers):
            return False
        if len({marker["attempt"] for marker in markers}) != 1:
            return False
        return all(markers[0].get(key) == value for key, value in facts.items())


def run_and_publish(cluster: Cluster, step: str, params_for: Callable, target: str, facts: dict) -> Dict[str, dict]:
    """Run ``step`` on every worker into one attempt, then publish it as ``target``.

    ``params_for(worker)`` gives each worker's parameters; ``facts`` go into
    the completion marker. Returns each worker's step result.
    """
    attempt = new_attempt()
    progress = display(step, cluster)
    held: Dict[str, Command] = {}
    try:
        results = cluster.each(step, progress.reporting(
            lambda w, on_progress: w.step(step, dict(params_for(w), attempt=attempt), on_progress, held)))
        progress.close()
        if "source_attempt" in facts and common_source(results, facts["source"])["attempt"] != facts["source_attempt"]:
            raise DatasetError(f"dataset {facts['source']!r} changed while {step} was reading it; run it again")
        publish(cluster, attempt, target, {name: r["files"] for name, r in results.items()}, facts, step, held)
    except BaseException:
        progress.close()
        discard(cluster, attempt, held)
        raise
    return results


def publish(cluster: Cluster, attempt: str, target: str, files: Dict[str, dict], facts: dict, what: str,
            held: Dict[str, Command] = None) -> None:
    """Publish ``attempt`` as ``target`` on every worker, each checking it holds ``files[worker]``.

    A worker whose step command is ``held`` open is told so in that same
    session; any other, or one whose session dropped meanwhile, gets a
    publish step of its own (publishing twice is recognised as done).
    """
    held = held if held is not None else {}

    def one(worker):
        verdict = {"target": target, "files": files[worker.name], "facts": facts}
        command = held.pop(worker.name, None)
        if command is not None:
            command.tell({"publish": verdict})
            try:
                result = command.finish()
                if "published" in result:  # else a worker older than this head, which did not wait
                    return result
            except WorkerUnreachable:
                if worker.lost is not None:
                    raise
        return worker.step("publish", dict(verdict, attempt=attempt))

    cluster.each(f"{what} (publishing {target})", one)


def discard(cluster: Cluster, attempt: str, held: Dict[str, Command] = None) -> None:
    """Remove an attempt's leftovers on every worker still reachable; a lost one keeps them until it cleans."""
    for command in (held or {}).values():  # a step waiting for its verdict: it is "no"
        command.kill()
    try:
        cluster.each("discard", lambda w: w.step("discard", {"attempt": attempt}),
                     [w for w in cluster.workers if w.lost is None])
    except Exception:  # noqa: BLE001 - best effort while another error is reported
        pass


def common_source(results: Dict[str, dict], source: str) -> dict:
    """The source's facts, refusing a dataset whose workers hold different versions."""
    versions = {(result["source"] or {}).get("attempt") for result in results.values()}
    if len(versions) != 1:
        raise DatasetError(
            f"dataset {source!r} differs between workers (made by different runs:"
            f" {', '.join(sorted(str(version) for version in versions))}); re-run the step that makes it"
        )
    return next(iter(results.values()))["source"]


def digest_of(parts) -> str:
    """A short digest of the given strings, for markers."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8") + b"\0")
    return digest.hexdigest()[:16]
