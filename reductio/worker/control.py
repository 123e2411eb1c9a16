"""The steps that only look at or change a worker's home: check, publish, discard, prepare, delete, status.

They read markers and rename folders, never a dataset's lines, so they are
cheap: cheaper than the login shell and the Python that a command of their
own costs over SSH. So besides running as one-off commands (worker.py), all
but prepare are served by a ``session``, one long-lived command per head
connection answering them one after another (the head's end: session.py).
Standard library only.
"""

from __future__ import annotations

import os
import sys
import time

from reductio.errors import DatasetError, ReductioError, environment_error
from reductio.wire.datasets import total
from reductio.wire.layout import shipped_whole
from reductio.wire.protocol import ANSWER, SESSION_STEPS, emit
from reductio.worker import heartbeat, steplog
from reductio.worker.store import Home, check_name


def step_check(params: dict) -> dict:
    """Before a step: the target's marker (if any), the source's version, the function's code digest,
    and which of the files shipped with a command (by digest) the home lacks.

    With each dataset goes its ``state`` (store.Home.state), so the head can
    settle a publish left half-done. A missing source is said, not raised: the
    head then tells a cluster that changed from a dataset that is missing.
    """
    home = Home(params["home"])
    home.check_ready()
    target = None
    try:
        target = {key: value for key, value in home.marker(params["target"]).items() if key != "files"}
    except DatasetError:
        pass
    target_state = home.state(params["target"]) if params.get("target") else None
    source = None
    if params.get("source"):
        try:
            marker = home.marker(check_name(params["source"]))
            # and before a step, the step that made it and the cluster it was made on (job.check_shape)
            source = dict(source_facts(marker), step=marker.get("step"), cluster=marker.get("cluster"))
            if params.get("source_files"):  # scatter's plan: what each sender will send (shuffle.py)
                source["files"] = marker["files"]
        except DatasetError as err:
            source = {"missing": str(err)}
        source["state"] = home.state(params["source"])
    functions = params.get("functions") or []
    code = None
    if functions:
        from reductio.wire.usercode import code_digest  # imports the user's code: only checks that name functions pay
        code = code_digest(functions)
    missing = [digest for digest in params.get("shipped") or [] if not shipped_whole(home.root, digest)]
    return {"target": target, "target_state": target_state, "source": source, "code": code, "missing": missing}


def step_publish(params: dict) -> dict:
    """Publish an attempt as its target (store.py), or one move of doing so across workers (``phase``:
    prepare, switch, drop or revert; job.publish)."""
    home = Home(params["home"])
    phase = params.get("phase")
    if phase in ("switch", "drop", "revert"):
        move = {"switch": home.switch, "drop": home.drop, "revert": home.revert}[phase]
        return {phase: move(params["attempt"], params["target"]), "cleaned": home.clean()}
    if phase == "prepare":
        marker = home.prepare_version(params["attempt"], params["target"], params["files"], params["facts"])
        return {"prepared": marker["dataset"]}
    marker = home.publish(params["attempt"], params["target"], params["files"], params["facts"])
    return {"published": marker["dataset"], "cleaned": home.clean()}


def step_discard(params: dict) -> dict:
    Home(params["home"]).discard(params["attempt"])
    return {}


def step_prepare(params: dict) -> dict:
    Home(params["home"]).prepare()
    return {"cpus": os.cpu_count(), "python": sys.version.split()[0]}


def step_delete(params: dict) -> dict:
    return {"deleted": Home(params["home"]).delete(params["name"])}


def step_status(params: dict) -> dict:
    """Per dataset: files, lines, bytes and the step that made it."""
    home = Home(params["home"])
    datasets = {}
    for name in home.datasets():
        try:
            marker = home.marker(name)
        except DatasetError as err:
            datasets[name] = {"error": str(err)}
            continue
        files = marker["files"].values()
        datasets[name] = {
            "files": len(marker["files"]),
            "lines": total(files, "lines"),
            "bytes": total(files, "bytes"),
            "step": marker.get("step", "?"),
            "from": marker.get("source") or marker.get("path") or marker.get("function") or "",
            "published": marker.get("published", 0),
            "cluster": marker.get("cluster"),
        }
    return {"datasets": datasets}


def source_facts(marker: dict) -> dict:
    """What the head needs to know of a step's source: its version and kind of lines."""
    return {key: marker.get(key) for key in ("attempt", "format", "partitions")}


def step_session(params: dict) -> dict:
    """Answer the head's requests for control steps until it says it is done (or hangs up: heartbeat.py).

    Each request is ``{"id", "step", "params"}``; the home is always the
    session's own, whatever a request says.
    """
    answered = 0
    while True:
        request = heartbeat.message().get("request")
        if not isinstance(request, dict):
            return {"answered": answered}
        emit(ANSWER, answer(request, params["home"]))
        answered += 1


def answer(request: dict, home: str) -> dict:
    """Run one control step ``{"step", "params"}`` in ``home``: ``{"id", "result"}`` or ``{"id", "error"}``, logged."""
    reply = {"id": request.get("id")}
    step = request.get("step")
    params = dict(request.get("params") or {}, home=home)
    started = time.time()
    try:
        if step not in SERVED:
            raise ReductioError(f"a session does not run {step!r}")
        try:
            reply["result"] = SERVED[step](params)
        except OSError as err:
            raise environment_error(err, home=home) from err
    except ReductioError as err:
        reply["error"] = err.to_dict()
        steplog.log(params, f"{step} failed after {time.time() - started:.1f} s: {err}")
        return reply
    if step not in ("check", "status"):
        steplog.log(params, f"{step} done in {time.time() - started:.1f} s")
    return reply


SERVED = {step: globals()[f"step_{step}"] for step in SESSION_STEPS}  # the head asks for them by name
