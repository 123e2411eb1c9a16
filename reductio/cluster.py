"""The workers as the head sees them, and running one thing on all at once.

A local worker and an SSH worker differ only in how a command runs
(invoke's ``Context.run`` or Fabric's ``Connection.run``, one interface)
and how bytes reach it (a pipe, or an SSH channel: see transport.py).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, List, TypeVar

import invoke

import reductio
from reductio.config import WorkerSpec, load_workers
from reductio.errors import ReductioError, StepFailed
from reductio.protocol import parse_reply
from reductio.transport import LocalStream

T = TypeVar("T")
_REDUCTIO_PARENT = str(Path(reductio.__file__).resolve().parent.parent)


class LocalWorker:
    """A worker that is a folder on this machine; its steps run as child processes."""

    def __init__(self, spec: WorkerSpec, index: int, config, project: str) -> None:
        self.spec, self.index, self.name = spec, index, spec.name
        self.home = spec.home
        self._context = invoke.Context(config=config)
        paths = [project, _REDUCTIO_PARENT, os.environ.get("PYTHONPATH", "")]
        self._env = "PYTHONPATH=" + shlex.quote(os.pathsep.join(p for p in paths if p))
        self._python = sys.executable

    def command(self, step: str, params: dict) -> str:
        """The shell command that runs ``step`` on this worker, every value quoted."""
        payload = json.dumps(dict(params, home=self.home), sort_keys=True)
        return f"{self._env} {shlex.join([self._python, '-m', 'reductio.worker', step, payload])}"

    def step(self, step: str, params: dict) -> dict:
        """Run a control step and return its result; small output only."""
        result = self._context.run(self.command(step, params), hide=True, warn=True, in_stream=False)
        return parse_reply(result.stderr, result.exited)

    def open(self, step: str, params: dict, mode: str) -> LocalStream:
        """Run a data step with a pipe to its stdin ("w") or from its stdout ("r")."""
        return LocalStream(self.command(step, params), mode)

    def destination(self) -> dict:
        """How other workers reach this one during scatter."""
        return {"kind": "local", "home": self.home}


class Cluster:
    """The ordered workers of one run: worker i owns partition i."""

    def __init__(self, workers: List[LocalWorker]) -> None:
        self.workers = workers

    @classmethod
    def from_context(cls, c) -> "Cluster":
        specs = load_workers(c.config)
        project = project_folder(c)
        workers = []
        for index, spec in enumerate(specs):
            if not spec.is_local:
                raise ReductioError(f"worker {spec.name}: SSH workers are not supported yet")
            workers.append(LocalWorker(spec, index, c.config, project))
        return cls(workers)

    def __len__(self) -> int:
        return len(self.workers)

    def each(self, what: str, action: Callable[[LocalWorker], T]) -> Dict[str, T]:
        """Run ``action`` on every worker at once; StepFailed names each worker that failed."""
        with ThreadPoolExecutor(max_workers=len(self.workers)) as pool:
            futures = {worker.name: pool.submit(action, worker) for worker in self.workers}
        results, errors = {}, {}
        for name, future in futures.items():
            error = future.exception()
            if error is None:
                results[name] = future.result()
            elif isinstance(error, ReductioError):
                errors[name] = error
            else:
                raise error
        if errors:
            raise StepFailed(what, errors, len(self.workers))
        return results


def project_folder(c) -> str:
    """The folder of the loaded fabfile (invoke's project location), else the current one."""
    prefix = getattr(c.config, "_project_prefix", None)
    return os.path.abspath(prefix or os.getcwd())
