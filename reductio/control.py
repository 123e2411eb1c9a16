"""The steps that only look at or change a worker's home: check, publish, discard, prepare, delete, status.

They read markers and rename folders, never a dataset's lines, so they are
cheap; worker.py runs them as one-off commands. Standard library only.
"""

from __future__ import annotations

import os
import sys

from reductio.errors import DatasetError
from reductio.store import Home, check_name


def step_check(params: dict) -> dict:
    """Before a step: the target's marker (if any), the source's version, the function's code digest."""
    home = Home(params["home"])
    home.check_ready()
    target = None
    try:
        target = {key: value for key, value in home.marker(params["target"]).items() if key != "files"}
    except DatasetError:
        pass
    source = source_facts(home.marker(check_name(params["source"]))) if params.get("source") else None
    functions = params.get("functions") or []
    code = None
    if functions:
        from reductio.steps import code_digest  # imports the user's code: only checks that name functions pay
        code = "-".join(code_digest(path) for path in functions)
    return {"target": target, "source": source, "code": code}


def step_publish(params: dict) -> dict:
    home = Home(params["home"])
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
            "lines": sum(entry["lines"] for entry in files),
            "bytes": sum(entry["bytes"] for entry in files),
            "step": marker.get("step", "?"),
            "from": marker.get("source") or marker.get("path") or marker.get("function") or "",
            "published": marker.get("published", 0),
        }
    return {"datasets": datasets}


def source_facts(marker: dict) -> dict:
    """What the head needs to know of a step's source: its version and kind of lines."""
    return {key: marker.get(key) for key in ("attempt", "format", "partitions")}
