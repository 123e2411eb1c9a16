"""The workers as the head sees them, and running one thing on all at once.

A local worker and an SSH worker differ only in how a command runs: a child
process with pipes, or an exec channel on the worker's one Fabric
connection (transport.py). Either way the head watches every reductio
command for silence (liveness.py) and, when one worker is lost, ends the
other workers' commands of that step too.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shlex
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, TypeVar

import reductio
from reductio import liveness, session
from reductio.config import WorkerSpec, load_workers, settings
from reductio.errors import ConfigError, ReductioError, StepFailed, WorkerSilent, WorkerUnreachable
from reductio.protocol import shell_path, worker_command
from reductio.transport import Command, Finished, LocalCommand, SshCommand, shut

T = TypeVar("T")
log = logging.getLogger("reductio")
_REDUCTIO_PARENT = str(Path(reductio.__file__).resolve().parent.parent)
KNOWN_HOSTS = ("~/.ssh/known_hosts", "~/.reductio/known_hosts")


class Worker:
    """What every kind of worker shares: building, running and watching reductio.worker commands."""

    #: (retries, first delay in seconds) for a worker that cannot be reached; doubles each time.
    retries = (0, 0.0)

    def __init__(self, spec: WorkerSpec, index: int, config) -> None:
        self.spec, self.index, self.name, self.home = spec, index, spec.name, spec.home
        self.dead_after, self.beat = liveness.dead_after(config), liveness.beat(config)
        self.lost: Optional[ReductioError] = None  # set once this task has given the worker up
        self._commands: List[Tuple[Command, Optional[liveness.Group]]] = []  # each with its fan-out, if any
        self._lock = threading.Lock()

    def python(self) -> str:
        """The shell words that start the worker's Python with reductio importable."""
        raise NotImplementedError

    def where(self) -> str:
        """The worker as a message names it."""
        return self.name

    def _start(self, command: str, mode: str, on_progress=None) -> Command:
        """Start a command in one of transport.py's modes."""
        raise NotImplementedError

    def start(self, command: str, mode: str, on_progress=None, watch: bool = False, grouped: bool = True) -> Command:
        """Start a command, ended with the others of this thread's group (unless not ``grouped``);
        ``watch``: lost when silent."""
        if self.lost is not None:
            raise self.lost
        started = self._start(command, mode, on_progress)
        group = liveness.current_group() if grouped else None
        with self._lock:
            self._commands = [(c, g) for c, g in self._commands if not c.is_over()] + [(started, group)]
        if group is not None:
            group.add(started)
        if watch:
            liveness.watchdog.watch(started, self, self.dead_after)
        return started

    def lose(self, error: ReductioError) -> None:
        """Give the worker up for this task: end its commands with ``error``, drop its connection, and
        stop the other workers' part of every fan-out it was in."""
        self.lost = self.lost or error
        with self._lock:
            commands = list(self._commands)
        for command, _ in commands:
            command.end(error, kill=False)  # first the reason, so whatever fails next reports it
        self.hang_up()
        for command, group in commands:
            command.end(error)
            if group is not None:
                group.lose(self, error)

    def hang_up(self) -> None:
        """Drop the worker's connection, if it has one."""

    def heard(self, command: Command) -> float:
        """When this worker last gave a sign of life while running ``command`` (time.monotonic)."""
        return command.heard

    def run(self, command: str) -> Finished:
        """Run a plain shell command (small output only: the end of it is kept)."""
        return self.start(command, "shell").finished()

    def open_command(self, command: str, mode: str) -> Command:
        """Run a plain shell command with our end of its stdin ("w") or stdout ("r")."""
        return self.start(command, mode)

    def command(self, step: str, params: dict) -> str:
        """The shell command that runs ``step`` on this worker, every value quoted (shown by --debug)."""
        command = worker_command(self.python(), step, dict(params, home=self.home))
        log.debug("%s: %s", self.name, command)
        return command

    def _head(self, stdin: str) -> dict:
        return {"beat": self.beat, "dead_after": self.dead_after, "stdin": stdin}

    def step(self, step: str, params: dict, on_progress=None, held: Dict[str, Command] = None) -> dict:
        """Run a control step and return its result, retrying only when the worker was unreachable.

        Every step is safe to repeat with the same attempt id: outputs are
        rewritten, received files replaced, a done publish recognised. A
        worker that fell silent is not retried: that already took dead_after.
        With ``held``, the command stays open after its result, waiting for
        its verdict (job.publish), and is put there under the worker's name.
        A control step goes to the worker's session when it has one
        (session.py); if that session is gone, to a command of its own.
        """
        if held is None and on_progress is None and step in session.SERVED:
            try:
                control = self.session()
                if control is not None:
                    return control.ask(step, params)
            except WorkerUnreachable as err:
                if isinstance(err, WorkerSilent) or self.lost is not None:
                    raise
                log.debug("%s: control session: %s; running %s on its own", self.name, err, step)
                self.end_session()
        retries, delay = self.retries
        for round_ in range(retries + 1):
            try:
                if held is not None:
                    params = dict(params, then="publish")
                command = self.start(self.command(step, dict(params, head=self._head("beats"))), "step",
                                     on_progress, watch=True)
                if held is None:
                    return command.finish()
                result = command.first_result()
                held[self.name] = command
                return result
            except WorkerUnreachable as err:
                if round_ == retries or isinstance(err, WorkerSilent) or self.lost is not None:
                    raise
                wait = delay * 2 ** round_
                print(f"reductio: {self.name}: {err}; retrying in {wait:g} s ({round_ + 2} of {retries + 1})",
                      file=sys.stderr, flush=True)
                time.sleep(wait)
        raise AssertionError("unreachable")

    def session(self):
        """This worker's control session (session.py), started if need be; None where commands are cheap."""
        return None

    def end_session(self) -> None:
        """End the control session, if there is one: the code it imported is about to change."""

    def open(self, step: str, params: dict, mode: str, on_progress=None) -> Command:
        """Run a data step with our end of its stdin ("w") or stdout ("r"), watched for silence."""
        head = self._head("data" if mode == "w" else "beats")
        return self.start(self.command(step, dict(params, head=head)), mode, on_progress, watch=True)


class LocalWorker(Worker):
    """A worker that is a folder on this machine; its steps run as child processes."""

    is_local = True

    def __init__(self, spec: WorkerSpec, index: int, config, project: str) -> None:
        super().__init__(spec, index, config)
        paths = [project, _REDUCTIO_PARENT, os.environ.get("PYTHONPATH", "")]
        self._pythonpath = os.pathsep.join(dict.fromkeys(p for p in paths if p))

    def python(self) -> str:
        # exec: the command's process is the worker itself, which a kill then reaches
        return f"PYTHONPATH={shlex.quote(self._pythonpath)} exec {shlex.quote(self.spec.python or sys.executable)}"

    def _start(self, command: str, mode: str, on_progress=None) -> Command:
        return LocalCommand(command, mode, self.beat, on_progress)

    def destination(self) -> dict:
        """How other workers reach this one during scatter."""
        return {"kind": "local", "home": self.home}


class SshWorker(Worker):
    """A worker reached over SSH with Fabric; host keys must be known, never added blindly."""

    is_local = False
    _connections: Dict[tuple, object] = {}
    _connecting: Dict[tuple, threading.RLock] = {}  # one per host: a host that does not answer holds up no other
    _connections_lock = threading.Lock()
    _sessions: Dict[tuple, "session.Session"] = {}  # by connection and home

    def __init__(self, spec: WorkerSpec, index: int, config) -> None:
        super().__init__(spec, index, config)
        self._config = config
        self.venv = f"{spec.home.rstrip('/')}/venv"
        found = settings(config)
        self.retries = (found.get("retries", 3), found.get("retry_delay", 1.0))

    def python(self) -> str:
        return shell_path(f"{self.venv}/bin/python")

    def where(self) -> str:
        return f"{self.name} ({self.spec.host}:{self.spec.port or 22})" if self.name != self.spec.host else self.name

    def connection(self):
        """The open Fabric connection to this worker, shared by every task of this process."""
        key = self._key()
        with SshWorker._connections_lock:
            connecting = SshWorker._connecting.setdefault(key, threading.RLock())
        with connecting:
            connection = self._connections.get(key)
            if connection is None or not connection.is_connected:
                connection = self._connect()
                with SshWorker._connections_lock:
                    self._connections[key] = connection
        return connection

    def _key(self) -> tuple:
        return (self.spec.host, self.spec.port, self.spec.username, self.spec.key_filename)

    def session(self):
        """One per connection and home: a login shell and a Python for each control step cost 0.3 s there."""
        self.connection()
        with SshWorker._connecting[self._key()]:
            control = SshWorker._sessions.get(self._key() + (self.home,))
            if control is None or not control.is_open():
                command = self.command("session", {"head": self._head("beats")})
                control = session.Session(self.start(command, "step", watch=True, grouped=False), self.name)
                SshWorker._sessions[self._key() + (self.home,)] = control
        return control

    def end_session(self) -> None:
        control = SshWorker._sessions.pop(self._key() + (self.home,), None)
        if control is not None:
            control.end()

    def _connect(self):
        from fabric import Connection
        from paramiko import RejectPolicy

        timeouts = {"banner_timeout": self.dead_after, "auth_timeout": self.dead_after,
                    "channel_timeout": self.dead_after}
        connect_kwargs = {"transport_factory": _gcm_first, **timeouts}
        if self.spec.key_filename:
            connect_kwargs["key_filename"] = self.spec.key_filename
        connection = Connection(
            self.spec.host, user=self.spec.username, port=self.spec.port, connect_timeout=self.dead_after,
            connect_kwargs=connect_kwargs, config=self._config,
        )
        hop = connection
        while isinstance(hop, Connection):  # every ProxyJump hop too: Fabric's own accept any host key
            for path in KNOWN_HOSTS:
                path = os.path.expanduser(path)
                if os.path.exists(path):
                    hop.client.load_system_host_keys(path)
            hop.client.set_missing_host_key_policy(RejectPolicy())
            hop = hop.gateway
        with self.reaching():
            connection.open()
        _keep_alive(connection.transport, self.dead_after)
        connection.reductio_heard = liveness.hear_connection(connection.transport, self.beat)
        return connection

    def heard(self, command: Command) -> float:
        connection = self._connections.get(self._key())
        heard = getattr(connection, "reductio_heard", None)
        return max(command.heard, heard()) if heard else command.heard

    def reaching(self):
        return _Reaching(self)

    def hang_up(self) -> None:
        with SshWorker._connections_lock:
            connection = self._connections.pop(self._key(), None)
        if connection is not None:
            transport = connection.transport
            if transport is not None and transport.sock is not None:
                shut(transport.sock)  # wakes a thread blocked sending to a host that went silent
            connection.close()

    def _start(self, command: str, mode: str, on_progress=None) -> Command:
        connection = self.connection()
        with self.reaching():
            return SshCommand(connection.transport, command, mode, self.beat, self.dead_after, on_progress)

    def host_key_line(self) -> str:
        """This worker's host key as a known_hosts line, as the head verified it."""
        key = self.connection().transport.get_remote_server_key()
        port = self.spec.port or 22
        host = self.spec.host if port == 22 else f"[{self.spec.host}]:{port}"
        return f"{host} {key.get_name()} {key.get_base64()}\n"

    def destination(self) -> dict:
        return {"kind": "ssh", "name": self.name, "host": self.spec.host, "port": self.spec.port or 22,
                "user": self.spec.username, "home": self.home,
                "compress": settings(self._config).get("compress", False), "dead_after": self.dead_after}


def _keep_alive(transport, dead_after: float) -> None:
    """A kernel that drops the connection when what we send (keepalives too) goes unacknowledged."""
    sock = transport.sock
    if hasattr(socket, "TCP_USER_TIMEOUT") and isinstance(sock, socket.socket):  # not through a gateway
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(dead_after * 1000))


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
            server = re.match(r"Server '\[?([^\]']+)\]?(?::(\d+))?' not found", str(error))
            host, port = (server.group(1), server.group(2) or "22") if server else (spec.host, spec.port or 22)
            shown = host if str(port) == "22" else f"[{host}]:{port}"  # as known_hosts writes it: a gateway's too
            message = (f"host key of {shown} is unknown; verify it, then add it to ~/.ssh/known_hosts"
                       f" (ssh-keyscan -p {port} {host})")
        elif isinstance(error, (socket.timeout, TimeoutError)) or (
                isinstance(error, paramiko.SSHException) and str(error).startswith("Timeout opening channel")):
            silent = f"cannot reach {where}: no answer within {self.worker.dead_after:g} s (dead_after)"
            raise WorkerSilent(silent) from None
        elif isinstance(error, EOFError):
            message = f"cannot reach {where}: the connection dropped"
        elif isinstance(error, (OSError, paramiko.SSHException)):
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


_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


def _machine(spec: WorkerSpec) -> str:
    """The machine a worker runs on, as far as the head can tell ("" is this one)."""
    return "" if spec.is_local or spec.host in _LOOPBACK else spec.host.lower()


def project_folder(c) -> str:
    """The folder of the loaded fabfile (invoke's project location), else the current one."""
    prefix = getattr(c.config, "_project_prefix", None)
    return os.path.abspath(prefix or os.getcwd())
