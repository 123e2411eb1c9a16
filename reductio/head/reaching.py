"""SSH failures as a user reads them: one line naming the worker and what to do.

A refused host key or login, a timeout, a host this machine has no route
to, a dropped connection: each becomes a WorkerUnreachable (transient,
retried) or a WorkerRefused / WorkerSilent (never retried: waiting mends no
key, and the silence already took dead_after), naming the host as the
head's connection reached it (~/.ssh/config), or the ProxyJump gateway.
"""

from __future__ import annotations

import errno
import os
import re
import socket

from reductio.errors import ReductioError, WorkerRefused, WorkerSilent, WorkerUnreachable


class Reaching:
    """Turns SSH failures into one-line WorkerUnreachable errors naming the worker; WorkerRefused for those
    that waiting does not mend (host key, authentication, no route), which are never retried."""

    def __init__(self, worker) -> None:
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
            host, port = self.worker.reached  # as ~/.ssh/config resolved them, which known_hosts names
            whose = ""
            if error.hostname != host:  # a ProxyJump hop's key (paramiko names the host it checked)
                gateway = [reached for reached in self.worker.gateways if reached[0] == error.hostname]
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
            user, keys = self.worker.offered
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


def keys_offered(connect_kwargs: dict) -> str:
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
