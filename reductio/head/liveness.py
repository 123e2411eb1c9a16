"""The head's half of liveness: a worker not heard from for ``dead_after`` seconds is lost.

Every reductio command on a worker says something at least every beat
(heartbeat.py: progress, ``reductio-alive``, or its data), and the head beats
on its stdin; on an SSH connection the head also asks the server for a
keepalive reply every beat. A watchdog thread looks at every such command;
one whose worker was not heard from -- no output, and over SSH no packet at
all on its own connection -- for ``dead_after`` seconds is ended with a
WorkerSilent error naming its host, and that worker's connection is hung up
so nothing else waits on it. A host that freezes still acknowledges at the
TCP level, so only this clock catches it. A command that says nothing for
``stuck_after`` seconds while its host still answers keepalives (a stopped
or deadlocked worker process) is lost the same way. Below that,
TCP_USER_TIMEOUT closes a connection whose peer stopped acknowledging,
between commands too (cluster.py).

The commands of one fan-out form a ``Group``: when one worker is lost the
others' commands of that step are ended as well, so the step stops within
``dead_after`` and a few seconds instead of running on for nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Dict, List, Optional

from reductio.errors import ReductioError, WorkerSilent
from reductio.head.config import settings
from reductio.head.feedback import interval

log = logging.getLogger("reductio")
DEFAULT_DEAD_AFTER = 30.0
DEFAULT_STUCK_AFTER = 600.0  # Hadoop's mapreduce.task.timeout: ten minutes
_LOOK_EVERY = 0.25  # seconds between the watchdog's looks


def dead_after(config) -> float:
    """Seconds of silence after which a worker is lost (``reductio: dead_after``)."""
    return settings(config).get("dead_after", DEFAULT_DEAD_AFTER)


def stuck_after(config) -> float:
    """Seconds a reductio command may say nothing while its host still answers (``reductio: stuck_after``):
    a deadlocked or stopped worker process, a disk in D state. Then the worker is lost too."""
    return settings(config).get("stuck_after", DEFAULT_STUCK_AFTER)


def beat(config) -> float:
    """Seconds between heartbeats: often enough that a few may be missed before dead_after."""
    return min(interval(config), dead_after(config) / 4)


class Stopped(ReductioError):
    """A command ended because another worker of its step was lost; not a failure of its own."""


class Group:
    """The commands of one fan-out over the workers, ended together when one worker is lost.

    A worker lost while the fan-out runs is remembered (``close`` says who) even if its
    own part had already returned -- a step held open for its verdict, a
    scatter receiver -- so the step fails naming it, not only the workers
    that were stopped or that failed talking to it.
    """

    def __init__(self) -> None:
        self._commands: List = []
        self._lock = threading.Lock()
        self.ended: Optional[ReductioError] = None
        self._lost: Dict[str, ReductioError] = {}
        self._closed = False

    def add(self, command) -> None:
        with self._lock:
            self._commands.append(command)
            ended = self.ended
        if ended is not None:
            command.end(ended)

    def end(self, why: ReductioError) -> None:
        """End every command of the group (and any added later) with ``why``."""
        with self._lock:
            if self.ended is not None or self._closed:
                return
            self.ended = why
            commands = list(self._commands)
        for command in commands:
            command.end(why)

    def lose(self, worker, why: ReductioError) -> None:
        """``worker`` is lost: remember why, and end the others' commands of this fan-out."""
        with self._lock:
            if self._closed:
                return
            self._lost.setdefault(worker.name, why)
        self.end(Stopped(f"stopped: {worker.where()} was lost"))

    def close(self) -> Dict[str, ReductioError]:
        """The fan-out is over: later losses belong to whatever runs next. Who was lost while it ran."""
        with self._lock:
            self._closed = True
            return dict(self._lost)


_current = threading.local()


def joining(group: Optional[Group]):
    """Run the calling thread's commands in ``group`` (Cluster.each sets it for each worker's thread)."""
    _current.group = group


def current_group() -> Optional[Group]:
    return getattr(_current, "group", None)


class _Watchdog:
    """One thread for the whole head, looking at every watched command.

    A worker is lost when nothing was heard from it for its ``dead_after``
    (over SSH: not even a keepalive reply), or when its command said nothing
    for its ``stuck_after`` although its host still answers. Each is given
    up in a thread of its own: a teardown that blocks holds up no other loss.
    """

    def __init__(self) -> None:
        self._watched: List[tuple] = []
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None

    def watch(self, command, worker) -> None:
        with self._lock:
            self._watched.append((command, worker))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, daemon=True, name="reductio-watchdog")
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(_LOOK_EVERY)
            now = time.monotonic()
            lost: Dict[object, tuple] = {}  # worker -> (command, why): each worker is given up once
            with self._lock:
                # a command whose stderr ended says no more: whoever waits on it learns how it ended
                watched = [entry for entry in self._watched if not entry[0].says_no_more()]
                for command, worker in watched:
                    why = silence(command, worker, now)
                    if why is not None and worker not in lost:
                        lost[worker] = (command, why)
                self._watched = [(command, worker) for command, worker in watched if worker not in lost]
            for worker, (command, why) in lost.items():
                threading.Thread(target=_give_up, args=(command, worker, why), daemon=True,
                                 name=f"reductio-lose-{worker.name}").start()


def silence(command, worker, now: float) -> Optional[WorkerSilent]:
    """Why ``worker`` running ``command`` is lost at ``now``, or None while it is heard often enough."""
    if now - worker.heard(command) > worker.dead_after:
        return WorkerSilent(f"no word from {worker.where()} for {worker.dead_after:g} s (dead_after); it is lost")
    if now - command.heard > worker.stuck_after:
        return WorkerSilent(f"{worker.where()} answers, but its reductio command said nothing for"
                            f" {worker.stuck_after:g} s (stuck_after); it is lost")
    return None


def _give_up(command, worker, error: WorkerSilent) -> None:
    try:
        worker.lose(error)
    except Exception:  # noqa: BLE001 - the watchdog must outlive any one worker's teardown
        log.exception("reductio: giving up %s failed", worker.name)
        command.end(error)


watchdog = _Watchdog()


def hear_connection(transport, beat: float) -> Callable[[], float]:
    """When an SSH connection last received a packet, kept current by asking the server something every beat.

    A server answers a ``keepalive@openssh.com`` request even while the
    command it runs is slow to say anything, so a host that is merely busy
    (a loaded machine, a slow start) is heard; one that dropped off is not.
    """
    packetizer = transport.packetizer
    read = packetizer.read_message
    last = [time.monotonic()]

    def read_message():
        message = read()
        last[0] = time.monotonic()
        return message

    packetizer.read_message = read_message  # the transport's reading thread looks it up on every packet

    def ask():
        while transport.is_active():
            try:
                transport.global_request("keepalive@openssh.com", wait=True)  # returns once answered, or closed
            except Exception:  # noqa: BLE001 - EOFError, SSHException: the connection is gone, and so are we
                return
            time.sleep(beat)

    threading.Thread(target=ask, daemon=True, name="reductio-keepalive").start()
    return lambda: last[0]
