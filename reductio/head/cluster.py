"""The ordered workers of one run, and running one thing on all at once.

Worker i owns partition i. ``each`` fans an action out to every worker in
threads and stops the others' part when one is lost (liveness.py); any
failure becomes one StepFailed naming each worker that failed. The workers
themselves are workers.py's.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Callable, Dict, List, TypeVar

from reductio.errors import ConfigError, ReductioError, StepFailed, WorkerUnreachable
from reductio.head import links, liveness
from reductio.head.config import load_workers, machine_of
from reductio.head.workers import LocalWorker, SshWorker, Worker

T = TypeVar("T")


class Cluster:
    """The ordered workers of one run: worker i owns partition i."""

    def __init__(self, workers: List[Worker], config=None) -> None:
        self.workers = workers
        self.config = config

    @classmethod
    def from_context(cls, c) -> "Cluster":
        from fabric import Connection

        if isinstance(c, Connection):
            raise ConfigError(
                "this task got a connection to one host (fab -H runs each task once per host);"
                " reductio tasks fan out to the workers themselves: use reductio -H, workers.cfg"
                " or the reductio: workers config key"
            )
        specs = load_workers(c.config)
        project = project_folder(c)
        run = links.of(c.config)  # the connections and sessions of every task sharing this Config
        return cls([
            LocalWorker(spec, index, c.config, project) if spec.is_local else SshWorker(spec, index, c.config, run)
            for index, spec in enumerate(specs)
        ], c.config)

    def __len__(self) -> int:
        return len(self.workers)

    def sharing(self, worker: Worker) -> int:
        """How many of the cluster's workers run on ``worker``'s machine: they split its cores."""
        mine = self._machines[worker.name]
        return sum(1 for machine in self._machines.values() if machine & mine)

    @functools.cached_property
    def _machines(self) -> Dict[str, frozenset]:
        """Each worker's machine, looked up once: sharing is asked for every worker of every step."""
        return {worker.name: machine_of(worker.spec, self.config) for worker in self.workers}

    def each(self, what: str, action: Callable[[Worker], T], workers: List[Worker] = None) -> Dict[str, T]:
        """Run ``action`` on every worker at once; StepFailed names each worker that failed."""
        workers = self.workers if workers is None else workers
        if not workers:
            return {}
        group = liveness.Group()

        def run(worker):
            liveness.joining(group)
            try:
                return action(worker)
            finally:
                liveness.joining(None)

        def end_others(worker, future):
            if isinstance(future.exception(), WorkerUnreachable):
                group.lose(worker, future.exception())

        pool = ThreadPoolExecutor(max_workers=len(workers))
        futures = {worker.name: pool.submit(run, worker) for worker in workers}
        for worker in workers:
            futures[worker.name].add_done_callback(functools.partial(end_others, worker))
        try:
            wait(futures.values())
        except KeyboardInterrupt:
            group.end(liveness.Stopped("interrupted"))
            self.hang_up()
            raise
        finally:
            pool.shutdown(wait=False)
        lost = group.close()
        results, errors, stopped = {}, {}, 0
        for name, future in futures.items():
            error = future.exception()
            if name in lost and (error is None or isinstance(error, liveness.Stopped)):
                error = lost[name]  # lost after its own part returned: held for its verdict, or receiving
            if error is None:
                results[name] = future.result()
            elif isinstance(error, liveness.Stopped):
                stopped += 1
            elif isinstance(error, ReductioError):
                errors[name] = error
            else:
                raise error
        if errors:
            raise StepFailed(what, errors, len(workers), stopped)
        return results


    def hang_up(self) -> None:
        """Drop every SSH connection: the worker commands see their stdin close and stop."""
        for worker in self.workers:
            if not worker.is_local:
                worker.hang_up()


def project_folder(c) -> str:
    """The folder of the loaded fabfile (invoke's project location), else the current one."""
    prefix = getattr(c.config, "_project_prefix", None)
    return os.path.abspath(prefix or os.getcwd())
