"""The workers as the head sees them: a folder on this machine, or an account on an SSH host.

A local worker and an SSH worker differ only in how a command runs: a child
process with pipes, or an exec channel on the worker's one Fabric
connection (transport.py, links.py). Either way the head watches every
reductio command for silence (liveness.py) and, when one worker is lost,
ends the other workers' commands of that step too.
"""

from __future__ import annotations

import getpass
import logging
import os
import shlex
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import reductio
from reductio.errors import ReductioError, WorkerRefused, WorkerSilent, WorkerUnreachable
from reductio.head import liveness, session
from reductio.head.ciphers import gcm_first
from reductio.head.config import WorkerSpec, settings
from reductio.head.links import Link, Links, hops
from reductio.head.reaching import Reaching, keys_offered
from reductio.head.transport import Command, Finished, LocalCommand, SshCommand
from reductio.wire.protocol import SESSION_STEPS, shell_path, worker_command

log = logging.getLogger("reductio")
_REDUCTIO_PARENT = str(Path(reductio.__file__).resolve().parent.parent)
# the head's own known_hosts files, whose keys it trusts (a worker's home has one of its own: layout.KNOWN_HOSTS)
HEAD_KNOWN_HOSTS = ("~/.ssh/known_hosts", "~/.reductio/known_hosts")
FINAL = (WorkerSilent, WorkerRefused)  # never retried: the silence already took dead_after; waiting mends no key


class Worker:
    """What every kind of worker shares: building, running and watching reductio.worker commands."""

    #: (retries, first delay in seconds) for a worker that cannot be reached; doubles each time.
    retries = (0, 0.0)

    def __init__(self, spec: WorkerSpec, index: int, config) -> None:
        self.spec, self.index, self.name, self.home = spec, index, spec.name, spec.home
        self.dead_after, self.beat = liveness.dead_after(config), liveness.beat(config)
        self.stuck_after = liveness.stuck_after(config)
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
            liveness.watchdog.watch(started, self)
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
        """When this worker last gave a sign of life while running ``command`` (time.monotonic): the command's
        own words, or over SSH any packet of its connection (its host answers keepalives)."""
        return command.heard

    def limit(self) -> str:
        """The limit a quiet worker runs into, as the progress line names it."""
        return f"dead_after {self.dead_after:g} s"

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
        if held is None and on_progress is None and step in SESSION_STEPS:
            try:
                control = self.session()
                if control is not None:
                    return control.ask(step, params)
            except WorkerUnreachable as err:
                if isinstance(err, FINAL) or self.lost is not None:
                    raise err from None
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
                if round_ == retries or isinstance(err, FINAL) or self.lost is not None:
                    raise err from None
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
        return {"kind": "local", "name": self.name, "home": self.home}


class SshWorker(Worker):
    """A worker reached over SSH with Fabric; host keys must be known, never added blindly."""

    is_local = False

    def __init__(self, spec: WorkerSpec, index: int, config, links: Links) -> None:
        super().__init__(spec, index, config)
        self._config = config
        self._links = links  # the run's connections and sessions, shared with the other workers of its tasks
        self.venv = f"{spec.home.rstrip('/')}/venv"
        # what the last connect tried, as its errors name it (reaching.py): user and keys; host and port after
        # ~/.ssh/config; each ProxyJump hop, as it was reached
        self.offered = (spec.username or getpass.getuser(), "")
        self.reached = (spec.host, spec.port or 22)
        self.gateways: List[Tuple[str, int]] = []
        found = settings(config)
        self.retries = (found.get("retries", 3), found.get("retry_delay", 1.0))

    def python(self) -> str:
        return shell_path(f"{self.venv}/bin/python")

    def where(self) -> str:
        return f"{self.name} ({self.spec.host}:{self.spec.port or 22})" if self.name != self.spec.host else self.name

    def connection(self):
        """The open Fabric connection to this worker, shared by every task of this run with its settings."""
        return self._link().connection

    def _link(self) -> Link:
        return self._links.link(self._key(), self._connect)

    def _key(self) -> tuple:
        """Links are kept by host, port, user, key and the liveness settings they were opened with: a job with
        other settings in the same process gets connections (and sessions) of its own."""
        return (self.spec.host, self.spec.port, self.spec.username, self.spec.key_filename, self.dead_after,
                self.beat)

    def session(self):
        """One per connection and home: a login shell and a Python for each control step cost 0.3 s there."""
        self.connection()

        def start() -> session.Session:
            command = self.command("session", {"head": self._head("beats")})
            return session.Session(self.start(command, "step", watch=True, grouped=False), self.name)

        return self._links.session(self._key(), self.home, start)

    def end_session(self) -> None:
        self._links.end_session(self._key(), self.home)

    def _connect(self) -> Link:
        from fabric import Connection
        from paramiko import RejectPolicy

        timeouts = {"banner_timeout": self.dead_after, "auth_timeout": self.dead_after,
                    "channel_timeout": self.dead_after}
        connect_kwargs = {"transport_factory": gcm_first, **timeouts}
        if self.spec.key_filename:
            connect_kwargs["key_filename"] = self.spec.key_filename
        connection = Connection(
            self.spec.host, user=self.spec.username, port=self.spec.port, connect_timeout=self.dead_after,
            connect_kwargs=connect_kwargs, config=self._config,
        )
        for hop in hops(connection):  # every ProxyJump hop too: Fabric's own accept any host key
            for path in HEAD_KNOWN_HOSTS:
                path = os.path.expanduser(path)
                if os.path.exists(path):
                    hop.client.load_system_host_keys(path)
            hop.client.set_missing_host_key_policy(RejectPolicy())
            if hop is not connection:  # and gets no timeout of its own from Fabric: the same as ours
                hop.connect_timeout = self.dead_after
                hop.connect_kwargs = dict(hop.connect_kwargs, **timeouts)
        self.offered = (connection.user, keys_offered(connection.connect_kwargs))
        self.reached = (connection.host, int(connection.port))
        self.gateways = [(hop.host, int(hop.port)) for hop in hops(connection) if hop is not connection]
        try:
            with self.reaching():
                connection.open()
        except BaseException:
            # A refused host key or login leaves paramiko's transport open: on the worker it would hold one of
            # sshd's MaxStartups slots, unauthenticated, for LoginGraceTime (120 s on Debian).
            for hop in hops(connection):
                hop.client.close()
            raise
        for hop in hops(connection):
            _keep_alive(hop.transport, self.dead_after)
            if hop is not connection:  # something to send, so a gateway that went away is found out
                hop.transport.set_keepalive(max(1, round(self.beat)))
        # The clock lives in our own object: an attribute set on a Connection lands in the Config that every
        # worker's connection shares, and each worker would read the clock of the last one opened.
        return Link(connection, liveness.hear_connection(connection.transport, self.beat))

    def heard(self, command: Command) -> float:
        link = self._links.get(self._key())
        return command.heard if link is None else max(command.heard, link.heard())

    def limit(self) -> str:
        link = self._links.get(self._key())
        if link is not None and time.monotonic() - link.heard() < 2 * self.beat + 1:
            return f"its host answers; stuck_after {self.stuck_after:g} s"
        return super().limit()

    def reaching(self) -> Reaching:
        return Reaching(self)

    def hang_up(self) -> None:
        self._links.drop(self._key())

    def _start(self, command: str, mode: str, on_progress=None) -> Command:
        connection = self.connection()
        with self.reaching():
            return SshCommand(connection.transport, command, mode, self.beat, self.dead_after, on_progress)

    def resolved(self) -> Tuple[str, int, str]:
        """Host, port and user as the head's connection reached them: Fabric applies ~/.ssh/config's HostName,
        Port and User where workers.cfg is silent, so the pinned key and scatter's target name the same sshd."""
        connection = self.connection()
        return connection.host, int(connection.port), connection.user

    def host_key_line(self) -> str:
        """This worker's host key as a known_hosts line, as the head verified it."""
        key = self.connection().transport.get_remote_server_key()
        host, port, _ = self.resolved()
        host = host if port == 22 else f"[{host}]:{port}"
        return f"{host} {key.get_name()} {key.get_base64()}\n"

    def destination(self) -> dict:
        host, port, user = self.resolved()
        return {"kind": "ssh", "name": self.name, "host": host, "port": port, "user": user, "home": self.home,
                "compress": settings(self._config).get("compress", False), "dead_after": self.dead_after}


def _keep_alive(transport, dead_after: float) -> None:
    """A kernel that drops the connection when what we send (keepalives too) goes unacknowledged."""
    sock = transport.sock
    if hasattr(socket, "TCP_USER_TIMEOUT") and isinstance(sock, socket.socket):  # a gateway's channel: its hop
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(dead_after * 1000))
