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

from reductio.errors import DatasetError, ReductioError, StepFailed, WorkerUnreachable
from reductio.head.cluster import Cluster
from reductio.head.feedback import display
from reductio.head.transport import Command


def new_attempt() -> str:
    """A fresh attempt id: sortable by time, unique across heads."""
    return time.strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(4)


class Survey:
    """What every worker says before a step: its target's marker, its source's version (with
    ``source_files``, its files too), the code, the shipped files it lacks (``shipped``: their digests).

    The source must have been made on this cluster (check_shape), and a
    publish of the source or the target left half-done is settled first.
    """

    def __init__(self, cluster: Cluster, what: str, target: str, source: str = None, functions=(), shipped=(),
                 source_files: bool = False):
        params = {"target": target, "source": source, "functions": list(functions), "shipped": list(shipped)}
        if source_files:  # and each worker's source files, as its marker lists them (scatter's plan)
            params["source_files"] = True
        self.cluster = cluster
        self.checks = cluster.each(f"{what} (check)", lambda w: w.step("check", params))
        for _ in range(3):  # a half-switch completed or undone, then the version it kept dropped
            if source:
                self._check_shape(source)  # first: never settle a dataset by the workers of another cluster
            if not self._settled(target, source):
                break
            self.checks = cluster.each(f"{what} (check)", lambda w: w.step("check", params))
        if source:
            self._check_present(what)
        self.source = common_source(self.checks, source) if source else None
        codes = {check["code"] for check in self.checks.values()}
        if len(codes) > 1:
            raise DatasetError(f"workers run different versions of {', '.join(functions)}; run distribute")
        self.code = codes.pop() if codes else None

    def _check_shape(self, source: str) -> None:
        """A source made on another cluster is refused as such, before a worker that lacks it is."""
        for check in self.checks.values():
            if "missing" not in check["source"]:
                check_shape(self.cluster, source, check["source"].get("cluster"))

    def _check_present(self, what: str) -> None:
        found = {name: check["source"] for name, check in self.checks.items()}
        missing = {name: DatasetError(facts["missing"]) for name, facts in found.items() if "missing" in facts}
        if missing:
            raise StepFailed(f"{what} (check)", missing, len(self.cluster))

    def _settled(self, target: str, source: str = None) -> bool:
        """Settle a half-done publish of the source or the target (``settle``); True if anything moved."""
        moved = False
        if source:
            moved = settle(self.cluster, source, {n: c["source"]["state"] for n, c in self.checks.items()})
        markers = [check["target"] for check in self.checks.values() if check.get("target")]
        states = {name: check.get("target_state") for name, check in self.checks.items()}
        if target and target != source and all(states.values()) and all(
                marker.get("cluster") == shape(self.cluster) for marker in markers):
            moved = settle(self.cluster, target, states) or moved
        return moved

    def current(self, facts: dict) -> bool:
        """True if every worker holds one version of the target, made with exactly ``facts`` on this cluster."""
        markers = [check["target"] for check in self.checks.values()]
        if not markers or any(marker is None for marker in markers):
            return False
        if len({marker["attempt"] for marker in markers}) != 1:
            return False
        if markers[0].get("cluster") != shape(self.cluster):
            return False
        return all(markers[0].get(key) == value for key, value in facts.items())


def shape(cluster: Cluster) -> list:
    """The cluster as a dataset's marker records it: its workers' names, in order."""
    return [worker.name for worker in cluster.workers]


def check_shape(cluster: Cluster, name: str, made_on) -> None:
    """Refuse a dataset made on another cluster: a worker gone would leave its part out, a new one has none."""
    now = shape(cluster)
    if made_on is not None and made_on != now:
        raise DatasetError(f"dataset {name!r} was made on {_workers(made_on)}, the cluster now has {_workers(now)};"
                           " re-run from a step that reads the head's data (load or initialize)")


def _workers(names: list) -> str:
    shown = ", ".join(names[:4]) + (f", ... ({len(names) - 4} more)" if len(names) > 4 else "")
    return f"{len(names)} worker(s) ({shown})"


def settle(cluster: Cluster, name: str, states: Dict[str, dict]) -> bool:
    """Finish a publish of ``name`` that a killed head or a lost host left half-switched; True if it moved.

    ``states``: each worker's ``store.Home.state``. Forward when every worker
    holds the newer version, published or prepared; else back when every
    worker that switched kept the version the others still publish. Once all
    agree, the versions kept for a switch are dropped.
    """
    workers = {worker.name: worker for worker in cluster.workers}
    linked = {worker: state["linked"] for worker, state in states.items()}
    versions = set(linked.values())
    if len(versions) == 1:
        (version,) = versions
        keeping = [workers[n] for n, state in states.items() if version is not None and version in state["kept"]]
        if keeping:
            try:
                cluster.each(f"publishing {name} (dropping the version it replaced)", lambda w: w.step(
                    "publish", {"phase": "drop", "target": name, "attempt": version}), keeping)
            except ReductioError:  # the next run tries again
                pass
        return False
    for version in sorted(versions - {None}, reverse=True):  # attempt ids sort by time: the newest first
        behind = [n for n, state in states.items() if state["linked"] != version]
        if all(version in states[n]["pending"] for n in behind):
            cluster.each(f"completing the publish of {name}", lambda w, version=version: w.step(
                "publish", {"phase": "switch", "target": name, "attempt": version}), [workers[n] for n in behind])
            return True
    for version in sorted(versions - {None}, reverse=True):
        ahead = [n for n, state in states.items() if state["linked"] == version]
        previous = {states[n]["kept"].get(version, "?") for n in ahead}
        if len(previous) == 1 and all(linked[n] == next(iter(previous)) for n in states if n not in ahead):
            cluster.each(f"undoing a half-done publish of {name}", lambda w, version=version: w.step(
                "publish", {"phase": "revert", "target": name, "attempt": version}), [workers[n] for n in ahead])
            return True
    return False


def run_and_publish(cluster: Cluster, step: str, params_for: Callable, target: str, facts: dict) -> Dict[str, dict]:
    """Run ``step`` on every worker into one attempt, then publish it as ``target``.

    ``params_for(worker)`` gives each worker's parameters; ``facts`` go into
    the completion marker. Each worker reads the version of the source the
    survey saw (``source_attempt``), or says it is gone. Returns each
    worker's step result.
    """
    attempt = new_attempt()
    progress = display(step, cluster)
    held: Dict[str, Command] = {}
    reading = {"source_attempt": facts["source_attempt"]} if "source_attempt" in facts else {}
    try:
        results = cluster.each(step, progress.reporting(
            lambda w, on_progress: w.step(step, dict(params_for(w), attempt=attempt, **reading), on_progress, held)))
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
    """Publish ``attempt`` as ``target`` on every worker or on none, each checking it holds ``files[worker]``.

    First every worker prepares (checks its files, moves them into its store);
    only then does each switch its link, keeping the version it replaced; and
    only once all switched is that version removed. A switch that fails is
    undone on the workers that switched; a head killed meanwhile leaves a
    half-switch that the next survey of the dataset settles (``settle``).
    A worker whose step command is ``held`` open prepares in that same
    session; any other, or one whose session dropped meanwhile, in a publish
    step of its own (preparing twice is recognised as done). The marker
    records the cluster (``shape``).
    """
    held = held if held is not None else {}
    facts = dict(facts, cluster=shape(cluster))

    def move(worker, phase: str) -> dict:
        """One move on one worker: in its held step command while that lives, else in a publish step."""
        request = {"phase": phase, "target": target}
        if phase == "prepare":
            request.update(files=files[worker.name], facts=facts)
        command = held.get(worker.name)
        if command is not None:
            command.tell({"publish": request} if phase == "prepare" else {phase: target})
            last = phase in ("drop", "revert")  # the command ends after these
            try:
                result = command.finish() if last else command.answer()
                if phase in result or (phase == "prepare" and "prepared" in result):
                    if last:
                        held.pop(worker.name, None)
                    return result
            except WorkerUnreachable:
                if worker.lost is not None:
                    raise
            held.pop(worker.name, None)
            command.kill()
        return worker.step("publish", dict(request, attempt=attempt))

    cluster.each(f"{what} (publishing {target})", lambda w: move(w, "prepare"))
    switched = []

    def switch(worker):
        result = move(worker, "switch")
        switched.append(worker)
        return result

    try:
        results = cluster.each(f"{what} (publishing {target})", switch)
    except BaseException:
        reachable = [worker for worker in switched if worker.lost is None]
        try:  # what cannot be undone now (a lost worker) the next survey settles
            cluster.each(f"{what} (undoing the publish of {target})", lambda w: move(w, "revert"), reachable)
        except Exception:  # noqa: BLE001 - best effort while another error is reported
            pass
        raise
    keeping = [worker for worker in cluster.workers if results[worker.name]["switch"]["keeping"]]
    try:
        cluster.each(f"{what} (publishing {target})", lambda w: move(w, "drop"), keeping)
    except ReductioError:  # published everywhere: the version kept goes at the next survey of the dataset
        pass
    for command in held.values():  # nothing was kept there: the command only waits to be let go
        command.tell({"drop": target})
        try:
            command.finish()
        except ReductioError:
            pass
    held.clear()


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
