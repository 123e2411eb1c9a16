"""The workers as the head sees them, and running one thing on all at once.

A local worker and an SSH worker differ only in how a command runs: a child
process with pipes, or an exec channel on the worker's one Fabric
connection (transport.py). Either way the head watches every reductio
command for silence (liveness.py) and, when one worker is lost, ends the
other workers' commands of that step too.
"""

from __future__ import annotations

import errno
import functools
import getpass
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
from reductio.errors import ConfigError, ReductioError, StepFailed, WorkerRefused, WorkerSilent, WorkerUnreachable
from reductio.protocol import shell_path, worker_command
from reductio.transport import Command, Finished, LocalCommand, SshCommand, shut

T = TypeVar("T")
log = logging.getLogger("reductio")
_REDUCTIO_PARENT = str(Path(reductio.__file__).resolve().parent.parent)
KNOWN_HOSTS = ("~/.ssh/known_hosts", "~/.reductio/known_hosts")
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
        if held is None and on_progress is None and step in session.SERVED:
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
    #: Open links by host, port, user, key and the liveness settings they were opened with: a job with other
    #: settings in the same process gets connections (and sessions) of its own (_key).
    _connections: Dict[tuple, "_Link"] = {}
    _connecting: Dict[tuple, threading.RLock] = {}  # one per host: a host that does not answer holds up no other
    _connections_lock = threading.Lock()
    _sessions: Dict[tuple, "session.Session"] = {}  # by connection and home

    def __init__(self, spec: WorkerSpec, index: int, config) -> None:
        super().__init__(spec, index, config)
        self._config = config
        self.venv = f"{spec.home.rstrip('/')}/venv"
        # what the last connect tried, as its errors name it: user and keys; host and port after ~/.ssh/config
        self._offered = (spec.username or getpass.getuser(), "")
        self._reached = (spec.host, spec.port or 22)
        self._gateways: List[Tuple[str, int]] = []  # each ProxyJump hop, as it was reached
        found = settings(config)
        self.retries = (found.get("retries", 3), found.get("retry_delay", 1.0))

    def python(self) -> str:
        return shell_path(f"{self.venv}/bin/python")

    def where(self) -> str:
        return f"{self.name} ({self.spec.host}:{self.spec.port or 22})" if self.name != self.spec.host else self.name

    def connection(self):
        """The open Fabric connection to this worker, shared by every task of this process with its settings."""
        return self._link().connection

    def _link(self) -> "_Link":
        key = self._key()
        with SshWorker._connections_lock:
            connecting = SshWorker._connecting.setdefault(key, threading.RLock())
        with connecting:
            link = self._connections.get(key)
            if link is None or not link.connection.is_connected:
                link = self._connect()
                with SshWorker._connections_lock:
                    self._connections[key] = link
        return link

    def _key(self) -> tuple:
        return (self.spec.host, self.spec.port, self.spec.username, self.spec.key_filename, self.dead_after,
                self.beat)

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

    def _connect(self) -> "_Link":
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
        for hop in _hops(connection):  # every ProxyJump hop too: Fabric's own accept any host key
            for path in KNOWN_HOSTS:
                path = os.path.expanduser(path)
                if os.path.exists(path):
                    hop.client.load_system_host_keys(path)
            hop.client.set_missing_host_key_policy(RejectPolicy())
            if hop is not connection:  # and gets no timeout of its own from Fabric: the same as ours
                hop.connect_timeout = self.dead_after
                hop.connect_kwargs = dict(hop.connect_kwargs, **timeouts)
        self._offered = (connection.user, _keys_offered(connection.connect_kwargs))
        self._reached = (connection.host, int(connection.port))
        self._gateways = [(hop.host, int(hop.port)) for hop in _hops(connection) if hop is not connection]
        try:
            with self.reaching():
                connection.open()
        except BaseException:
            # A refused host key or login leaves paramiko's transport open: on the worker it would hold one of
            # sshd's MaxStartups slots, unauthenticated, for LoginGraceTime (120 s on Debian).
            for hop in _hops(connection):
                hop.client.close()
            raise
        for hop in _hops(connection):
            _keep_alive(hop.transport, self.dead_after)
            if hop is not connection:  # something to send, so a gateway that went away is found out
                hop.transport.set_keepalive(max(1, round(self.beat)))
        # The clock lives in our own object: an attribute set on a Connection lands in the Config that every
        # worker's connection shares, and each worker would read the clock of the last one opened.
        return _Link(connection, liveness.hear_connection(connection.transport, self.beat))

    def heard(self, command: Command) -> float:
        link = self._connections.get(self._key())
        return command.heard if link is None else max(command.heard, link.heard())

    def limit(self) -> str:
        link = self._connections.get(self._key())
        if link is not None and time.monotonic() - link.heard() < 2 * self.beat + 1:
            return f"its host answers; stuck_after {self.stuck_after:g} s"
        return super().limit()

    def reaching(self):
        return _Reaching(self)

    def hang_up(self) -> None:
        with SshWorker._connections_lock:
            link = self._connections.pop(self._key(), None)
        if link is not None:
            link.close()

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


class _Link:
    """One open connection to a worker host, and its own clock: when it last received a packet."""

    def __init__(self, connection, heard: Callable[[], float]) -> None:
        self.connection, self.heard = connection, heard

    def close(self) -> None:
        """Cut the socket first (that wakes a thread blocked sending to a silent host), then close.

        Through ProxyJump the connection's socket is a channel of the hop's, whose shutdown would wait on a
        writer stuck on a dead gateway: the first hop's own socket is cut instead, which ends them all."""
        for hop in reversed(_hops(self.connection)):
            transport = hop.transport
            if transport is not None and isinstance(transport.sock, socket.socket):
                shut(transport.sock)
                break
        for hop in _hops(self.connection):
            try:
                hop.close()
            except Exception:  # noqa: BLE001 - EOFError, SSHException: a channel of a hop cut just now
                pass


def _hops(connection) -> list:
    """The connection and each ProxyJump gateway it goes through, the first hop from the head last."""
    from fabric import Connection

    hops = []
    while isinstance(connection, Connection):
        hops.append(connection)
        connection = connection.gateway
    return hops


def _keep_alive(transport, dead_after: float) -> None:
    """A kernel that drops the connection when what we send (keepalives too) goes unacknowledged."""
    sock = transport.sock
    if hasattr(socket, "TCP_USER_TIMEOUT") and isinstance(sock, socket.socket):  # a gateway's channel: its hop
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
    """Turns SSH failures into one-line WorkerUnreachable errors naming the worker; WorkerRefused for those
    that waiting does not mend (host key, authentication, no route), which are never retried."""

    def __init__(self, worker: SshWorker) -> None:
        self.worker = worker

    def __enter__(self):
        return self

    def __exit__(self, kind, error, _traceback):
        if error is None or isinstance(error, ReductioError):
            return False
        import paramiko

        spec = self.worker.spec
        port = spec.port or 22
        where = f"{spec.host}:{port}"
        shown = spec.host if port == 22 else f"[{spec.host}]:{port}"  # as known_hosts writes it
        if isinstance(error, paramiko.BadHostKeyException):
            host, port = self.worker._reached  # as ~/.ssh/config resolved them, which known_hosts names
            whose = ""
            if error.hostname != host:  # a ProxyJump hop's key (paramiko names the host it checked)
                gateway = [reached for reached in self.worker._gateways if reached[0] == error.hostname]
                if gateway:
                    (host, port), whose = gateway[0], f", the ProxyJump gateway to {self.worker.name},"
            shown = host if port == 22 else f"[{host}]:{port}"
            raise WorkerRefused(
                f"host key of {shown}{whose} has CHANGED"
                f" (got {error.key.get_name()} {error.key.get_fingerprint().hex()});"
                " refusing to connect. If the machine was reinstalled, remove its old line"
                f" (ssh-keygen -R '{shown}'), check the new key (ssh-keyscan -p {port} {host}) and add it"
                " to ~/.ssh/known_hosts") from None
        if isinstance(error, paramiko.AuthenticationException) or (
                isinstance(error, paramiko.SSHException) and "No authentication methods" in str(error)):
            user, keys = self.worker._offered
            raise WorkerRefused(
                f"authentication to {where} as {user} failed ({error}); tried {keys}; check key_filename or"
                " ssh-agent, and that the public key is in that account's ~/.ssh/authorized_keys (ssh-copy-id)"
            ) from None
        if isinstance(error, paramiko.SSHException) and "known_hosts" in str(error):
            server = re.match(r"Server '\[?([^\]']+)\]?(?::(\d+))?' not found", str(error))
            host, port = (server.group(1), server.group(2) or "22") if server else (spec.host, port)
            shown = host if str(port) == "22" else f"[{host}]:{port}"  # a gateway's too
            raise WorkerRefused(f"host key of {shown} is unknown; verify it, then add it to ~/.ssh/known_hosts"
                                f" (ssh-keyscan -p {port} {host})") from None
        if isinstance(error, (socket.timeout, TimeoutError)) or (
                isinstance(error, paramiko.SSHException) and str(error).startswith("Timeout opening channel")):
            silent = f"cannot reach {where}: no answer within {self.worker.dead_after:g} s (dead_after)"
            raise WorkerSilent(silent) from None
        if _no_route(error):
            raise WorkerRefused(f"cannot reach {where}: this machine has no route to it ({_no_route(error)});"
                                " check the head's network (interface, VPN, routes)") from None
        if isinstance(error, EOFError):
            message = f"cannot reach {where}: the connection dropped"
        elif isinstance(error, (OSError, paramiko.SSHException)):
            message = f"cannot reach {where}: {error.strerror if getattr(error, 'strerror', None) else error}"
        else:
            return False
        raise WorkerUnreachable(message) from None


_NO_ROUTE = (errno.EINVAL, errno.ENETUNREACH, errno.EHOSTUNREACH)  # EINVAL: a blackhole route on the head


def _no_route(error: BaseException) -> str:
    """The reason a connect failed because this machine cannot send there, or ""."""
    causes = [error] + list(getattr(error, "errors", {}).values())  # paramiko's NoValidConnectionsError
    for cause in causes:
        if isinstance(cause, OSError) and cause.errno in _NO_ROUTE:
            return cause.strerror or os.strerror(cause.errno)
    return ""


def _keys_offered(connect_kwargs: dict) -> str:
    """The key files and agent paramiko offers, in its order: key_filename (workers.cfg's, or ~/.ssh/config's
    IdentityFile as Fabric passes them), ssh-agent, then ~/.ssh/id_* (look_for_keys); as an error names them."""
    given = connect_kwargs.get("key_filename") or []
    files = [given] if isinstance(given, str) else list(given)
    if connect_kwargs.get("allow_agent", True) and os.environ.get("SSH_AUTH_SOCK"):
        files.append("ssh-agent")
    if connect_kwargs.get("look_for_keys", True):
        files += [path for path in (f"~/.ssh/id_{kind}" for kind in ("rsa", "ecdsa", "ed25519", "dsa"))
                  if os.path.exists(os.path.expanduser(path)) and path not in files]
    return ", ".join(files) or "no key at all (no key_filename, no ~/.ssh/id_* file, no ssh-agent)"


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
