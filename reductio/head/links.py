"""The head's open SSH connections to its workers, and each one's control session, kept for the whole run.

Every task of a head process (``reductio load ... map ...``, a fabfile
calling tasks, the mrjob runner) reuses one connection per worker host and
one control session per connection and home (session.py): a login and a
Python cost 0.3 s there. They are kept by the liveness settings they were
opened with too, so a job with other settings in the same run gets its own.
A run owns its ``Links``: the invoke Config its tasks share (one program
run, one fabfile's task calling others), handed by Cluster.from_context to
the SSH workers (``of``). Another Config is another run, with connections
of its own; ``close()`` ends a run's.
"""

from __future__ import annotations

import socket
import threading
from typing import Callable, Dict, Optional

from reductio.head.transport import shut


class Link:
    """One open connection to a worker host, and its own clock: when it last received a packet."""

    def __init__(self, connection, heard: Callable[[], float]) -> None:
        self.connection, self.heard = connection, heard

    def close(self) -> None:
        """Cut the socket first (that wakes a thread blocked sending to a silent host), then close.

        Through ProxyJump the connection's socket is a channel of the hop's, whose shutdown would wait on a
        writer stuck on a dead gateway: the first hop's own socket is cut instead, which ends them all."""
        for hop in reversed(hops(self.connection)):
            transport = hop.transport
            if transport is not None and isinstance(transport.sock, socket.socket):
                shut(transport.sock)
                break
        for hop in hops(self.connection):
            try:
                hop.close()
            except Exception:  # noqa: BLE001 - EOFError, SSHException: a channel of a hop cut just now
                pass


def hops(connection) -> list:
    """The connection and each ProxyJump gateway it goes through, the first hop from the head last."""
    from fabric import Connection

    hops = []
    while isinstance(connection, Connection):
        hops.append(connection)
        connection = connection.gateway
    return hops


class Links:
    """Open links by host, port, user, key and liveness settings (a worker's ``key``), and their sessions."""

    def __init__(self) -> None:
        self._links: Dict[tuple, Link] = {}
        # one lock per host: a host that does not answer holds up no other
        self._connecting: Dict[tuple, threading.RLock] = {}
        self._lock = threading.Lock()
        self._sessions: Dict[tuple, object] = {}  # by link key and home: session.Session

    def link(self, key: tuple, connect: Callable[[], Link]) -> Link:
        """The open link for ``key``, made with ``connect`` when there is none or it was closed."""
        with self._lock:
            connecting = self._connecting.setdefault(key, threading.RLock())
        with connecting:
            link = self._links.get(key)
            if link is None or not link.connection.is_connected:
                link = connect()
                with self._lock:
                    self._links[key] = link
        return link

    def get(self, key: tuple) -> Optional[Link]:
        """The link for ``key`` if one was made, open or not."""
        return self._links.get(key)

    def drop(self, key: tuple) -> None:
        """Close the link for ``key`` and forget it."""
        with self._lock:
            link = self._links.pop(key, None)
        if link is not None:
            link.close()

    def session(self, key: tuple, home: str, start: Callable[[], object]):
        """The open control session for ``home`` over the link for ``key`` (made first), started if need be."""
        with self._connecting[key]:
            control = self._sessions.get(key + (home,))
            if control is None or not control.is_open():
                control = start()
                self._sessions[key + (home,)] = control
        return control

    def end_session(self, key: tuple, home: str) -> None:
        """End the control session for ``home`` over the link for ``key``, if there is one."""
        control = self._sessions.pop(key + (home,), None)
        if control is not None:
            control.end()

    def sessions(self) -> Dict[tuple, object]:
        """The sessions started, open or not, by link key and home."""
        return dict(self._sessions)

    def close(self) -> None:
        """Close every link and forget every session: the end of the run."""
        for link in list(self._links.values()):
            link.close()
        self._links.clear()
        self._sessions.clear()


def of(config) -> Links:
    """The links of the run whose tasks share ``config`` (an invoke Config), made on first use."""
    links = vars(config).get("_reductio_links")
    if links is None:
        links = Links()
        # a plain attribute, not a config key: a Config turns attribute writes into settings, and a clone
        # (another run) must not share it
        object.__setattr__(config, "_reductio_links", links)
    return links


def opened(config) -> Optional[Links]:
    """The run's links if any task of it needed them, without making them."""
    return vars(config).get("_reductio_links")
