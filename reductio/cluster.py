"""The workers as the head sees them, and running one thing on all at once.

A local worker and an SSH worker differ only in how a command runs
(invoke's ``Context.run`` or Fabric's ``Connection.run``, one interface)
and how bytes reach it (a pipe, or an SSH exec channel: transport.py).
"""

from __future__ import annotations

import logging
import os
import shlex
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable, Dict, List, TypeVar

import invoke

import reductio
from reductio.config import WorkerSpec, load_workers, settings
from reductio.errors import ConfigError, ReductioError, StepFailed, WorkerUnreachable
from reductio.protocol import parse_reply, shell_path, worker_command
from reductio.transport import LocalStream, SshStream

T = TypeVar("T")
log = logging.getLogger("reductio")
_REDUCTIO_PARENT = str(Path(reductio.__file__).resolve().parent.parent)
KNOWN_HOSTS = ("~/.ssh/known_hosts", "~/.reductio/known_hosts")


class Worker:
    """What every kind of worker shares: building and running reductio.worker commands."""

    #: (retries, first delay in seconds) for a worker that cannot be reached; doubles each time.
    retries = (0, 0.0)

    def __init__(self, spec: WorkerSpec, index: int) -> None:
        self.spec, self.index, self.name, self.home = spec, index, spec.name, spec.home

    def python(self) -> str:
        """The shell words that start the worker's Python with reductio importable."""
        raise NotImplementedError

    def run(self, command: str, err_stream=None):
        """Run a shell command; return invoke's Result (small output only).

        With ``err_stream``, stderr is also written there as it arrives (progress).
        """
        raise NotImplementedError

    def open_command(self, command: str, mode: str):
        """Run a shell command with a pipe to its stdin ("w") or from its stdout ("r")."""
        raise NotImplementedError

    def command(self, step: str, params: dict) -> str:
        """The shell command that runs ``step`` on this worker, every value quoted (shown by --debug)."""
        command = worker_command(self.python(), step, dict(params, home=self.home))
        log.debug("%s: %s", self.name, command)
        return command

    def step(self, step: str, params: dict, err_stream=None) -> dict:
        """Run a control step and return its result, retrying only when the worker was unreachable.

        Every step is safe to repeat with the same attempt id: outputs are
        rewritten, received files replaced, a done publish recognised.
        """
        retries, delay = self.retries
        for round_ in range(retries + 1):
            try:
                result = self.run(self.command(step, dict(params, exit_on_eof=True)), err_stream)
                return parse_reply(result.stderr, result.exited)
            except WorkerUnreachable as err:
                if round_ == retries:
                    raise
                wait = delay * 2 ** round_
                print(f"reductio: {self.name}: {err}; retrying in {wait:g} s ({round_ + 2} of {retries + 1})",
                      file=sys.stderr, flush=True)
                time.sleep(wait)
        raise AssertionError("unreachable")

    def open(self, step: str, params: dict, mode: str):
        """Run a data step with a pipe to its stdin ("w") or from its stdout ("r")."""
        return self.open_command(self.command(step, params), mode)


class _ClosingLocal(invoke.Local):
    """invoke's Local runner, also closing the child's pipes, which invoke 2.2 leaves to the GC."""

    def stop(self) -> None:
        super().stop()
        process = getattr(self, "process", None)
        for pipe in (process.stdin, process.stdout, process.stderr) if process else ():
            if pipe:
                pipe.close()


class LocalWorker(Worker):
    """A worker that is a folder on this machine; its steps run as child processes."""

    is_local = True

    def __init__(self, spec: WorkerSpec, index: int, config, project: str) -> None:
        super().__init__(spec, index)
        config = config.clone()
        config.runners.local = _ClosingLocal
        self._context = invoke.Context(config=config)
        paths = [project, _REDUCTIO_PARENT, os.environ.get("PYTHONPATH", "")]
        self._pythonpath = os.pathsep.join(dict.fromkeys(p for p in paths if p))

    def python(self) -> str:
        return f"PYTHONPATH={shlex.quote(self._pythonpath)} {shlex.quote(sys.executable)}"

    def run(self, command: str, err_stream=None):
        return self._context.run(command, warn=True, in_stream=False, **_output(err_stream))

    def open_command(self, command: str, mode: str) -> LocalStream:
        return LocalStream(command, mode)

    def destination(self) -> dict:
        """How other workers reach this one during scatter."""
        return {"kind": "local", "home": self.home}


class SshWorker(Worker):
    """A worker reached over SSH with Fabric; host keys must be known, never added blindly."""

    is_local = False
    _connections: Dict[tuple, object] = {}
    _lock = threading.Lock()

    def __init__(self, spec: WorkerSpec, index: int, config) -> None:
        super().__init__(spec, index)
        self._config = config
        self.venv = f"{spec.home.rstrip('/')}/venv"
        found = settings(config)
        self.retries = (found.get("retries", 3), found.get("retry_delay", 1.0))

    def python(self) -> str:
        return shell_path(f"{self.venv}/bin/python")

    def connection(self):
        """The open Fabric connection to this worker, shared by every task of this process."""
        key = (self.spec.host, self.spec.port, self.spec.username, self.spec.key_filename)
        with self._lock:
            connection = self._connections.get(key)
            if connection is None or not connection.is_connected:
                connection = self._connect()
                self._connections[key] = connection
        return connection

    def _connect(self):
        from fabric import Connection
        from paramiko import RejectPolicy

        connect_kwargs = {"transport_factory": _gcm_first}
        if self.spec.key_filename:
            connect_kwargs["key_filename"] = self.spec.key_filename
        connection = Connection(
            self.spec.host, user=self.spec.username, port=self.spec.port,
            connect_kwargs=connect_kwargs, config=self._config,
        )
        for path in KNOWN_HOSTS:
            path = os.path.expanduser(path)
            if os.path.exists(path):
                connection.client.load_system_host_keys(path)
        connection.client.set_missing_host_key_policy(RejectPolicy())
        with self.reaching():
            connection.open()
        return connection

    def reaching(self):
        return _Reaching(self)

    def hang_up(self) -> None:
        key = (self.spec.host, self.spec.port, self.spec.username, self.spec.key_filename)
        with self._lock:
            connection = self._connections.pop(key, None)
        if connection is not None:
            connection.close()

    def run(self, command: str, err_stream=None):
        connection = self.connection()
        with self.reaching():
            result = connection.run(command, warn=True, in_stream=False, **_output(err_stream))
        if result.exited == -1:  # no exit status: the connection dropped, or a signal ended the command
            if connection.transport is None or not connection.transport.is_active():
                raise WorkerUnreachable(f"lost the connection to {self.spec.host}:{self.spec.port or 22} during a command")
            raise ReductioError("the worker process was killed (it ended by a signal, without an exit status)",
                                result.stderr[-2000:])
        return result

    def open_command(self, command: str, mode: str) -> SshStream:
        connection = self.connection()
        with self.reaching():
            return SshStream(connection.transport, command, mode)

    def host_key_line(self) -> str:
        """This worker's host key as a known_hosts line, as the head verified it."""
        key = self.connection().transport.get_remote_server_key()
        port = self.spec.port or 22
        host = self.spec.host if port == 22 else f"[{self.spec.host}]:{port}"
        return f"{host} {key.get_name()} {key.get_base64()}\n"

    def destination(self) -> dict:
        return {"kind": "ssh", "host": self.spec.host, "port": self.spec.port or 22,
                "user": self.spec.username, "home": self.home, "python": f"{self.venv}/bin/python",
                "compress": settings(self._config).get("compress", False)}


# paramiko offers AES-GCM last, after AES-CTR with a separate HMAC; with GCM the head's own transfers
# (load, merge) moved 340-450 MB/s up and 460-510 MB/s down over loopback here, against 240-270 and
# 350 with paramiko's order. The rest of paramiko's list stays, in its order, for servers without GCM.
GCM_FIRST = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


def _gcm_first(sock, **kwargs):
    """A paramiko Transport that offers AES-GCM before its other ciphers (SSHClient's transport_factory)."""
    from paramiko import Transport

    transport = Transport(sock, **kwargs)
    options = transport.get_security_options()
    first = [name for name in GCM_FIRST if name in options.ciphers]
    options.ciphers = tuple(first + [name for name in options.ciphers if name not in first])
    return transport


def _output(err_stream) -> dict:
    """invoke run() options: capture everything; copy stderr to ``err_stream`` as it comes, if given."""
    if err_stream is None:
        return {"hide": True}
    return {"hide": "out", "err_stream": err_stream}


class _Reaching:
    """Turns SSH failures into one-line WorkerUnreachable errors naming the worker."""

    def __init__(self, worker: SshWorker) -> None:
        self.worker = worker

    def __enter__(self):
        return self

    def __exit__(self, kind, error, _traceback):
        if error is None or isinstance(error, ReductioError):
            return False
        import paramiko

        spec = self.worker.spec
        where = f"{spec.host}:{spec.port or 22}"
        if isinstance(error, paramiko.BadHostKeyException):
            message = (f"host key of {where} has CHANGED (got {error.key.get_name()} {error.key.get_fingerprint().hex()});"
                       " refusing to connect. If the machine was reinstalled, remove its old line from known_hosts")
        elif isinstance(error, paramiko.AuthenticationException):
            message = f"authentication to {where} as {spec.username or 'the current user'} failed: check key_filename or ssh-agent"
        elif isinstance(error, paramiko.SSHException) and "known_hosts" in str(error):
            message = (f"host key of {where} is unknown; verify it, then add it to ~/.ssh/known_hosts"
                       f" (ssh-keyscan -p {spec.port or 22} {spec.host})")
        elif isinstance(error, (socket.timeout, TimeoutError)):
            message = f"cannot reach {where}: timed out"
        elif isinstance(error, (OSError, paramiko.SSHException, EOFError)):
            message = f"cannot reach {where}: {error.strerror if getattr(error, 'strerror', None) else error}"
        else:
            return False
        raise WorkerUnreachable(message) from None


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
        return cls([
            LocalWorker(spec, index, c.config, project) if spec.is_local else SshWorker(spec, index, c.config)
            for index, spec in enumerate(specs)
        ], c.config)

    def __len__(self) -> int:
        return len(self.workers)

    def sharing(self, worker: Worker) -> int:
        """How many of the cluster's workers run on ``worker``'s machine: they split its cores."""
        return sum(1 for other in self.workers if _machine(other.spec) == _machine(worker.spec))

    def each(self, what: str, action: Callable[[Worker], T], workers: List[Worker] = None) -> Dict[str, T]:
        """Run ``action`` on every worker at once; StepFailed names each worker that failed."""
        workers = self.workers if workers is None else workers
        if not workers:
            return {}
        pool = ThreadPoolExecutor(max_workers=len(workers))
        futures = {worker.name: pool.submit(action, worker) for worker in workers}
        try:
            wait(futures.values())
        except KeyboardInterrupt:
            self.hang_up()
            raise
        finally:
            pool.shutdown(wait=False)
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
            raise StepFailed(what, errors, len(workers))
        return results


    def hang_up(self) -> None:
        """Drop every SSH connection: the worker commands see their stdin close and stop."""
        for worker in self.workers:
            if not worker.is_local:
                worker.hang_up()


_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


def _machine(spec: WorkerSpec) -> str:
    """The machine a worker runs on, as far as the head can tell ("" is this one)."""
    return "" if spec.is_local or spec.host in _LOOPBACK else spec.host.lower()


def project_folder(c) -> str:
    """The folder of the loaded fabfile (invoke's project location), else the current one."""
    prefix = getattr(c.config, "_project_prefix", None)
    return os.path.abspath(prefix or os.getcwd())
