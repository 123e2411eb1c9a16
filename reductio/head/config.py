"""Which workers make the cluster (workers.cfg, Fabric config, -H, or local workers), and reductio's settings.

The order is documented in ``load_workers``; whatever it finds becomes an
ordered list of ``WorkerSpec``, and a worker's index in that list is the
partition it owns. ``settings`` reads the ``reductio:`` config key, refusing
unknown names and bad values before any step starts.
"""

from __future__ import annotations

import configparser
import functools
import getpass
import logging
import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from fabric.connection import derive_shorthand

from reductio.errors import ConfigError
from reductio.wire.sorting import SIZE

log = logging.getLogger("reductio")

WORKERS_CFG = "workers.cfg"
DEFAULT_HOME = "~/.reductio"
_KEYS = {"host", "username", "port", "key_filename", "home", "python", "local", "authorized_keys", "processes"}
_SECRETS = {"password", "passphrase", "connect_kwargs"}


@dataclass(frozen=True)
class WorkerSpec:
    """One worker as configured: a local folder, or a host reached over SSH."""

    name: str
    home: str
    host: Optional[str] = None
    port: Optional[int] = None
    username: Optional[str] = None
    key_filename: Optional[str] = None
    python: Optional[str] = None
    authorized_keys: Optional[str] = None
    processes: Optional[int] = None  # map/reduce processes; None: its cores over the workers sharing its machine

    @property
    def is_local(self) -> bool:
        return self.host is None


def load_workers(config) -> List[WorkerSpec]:
    """The cluster's workers, from the first of these that names any:

    1. ``reductio: workers:`` in invoke/Fabric config (fabric.yaml and friends,
       and what ``reductio -H`` puts there);
    2. ``./workers.cfg``;
    3. ``~/.reductio/workers.cfg``;
    4. otherwise ``reductio: local_workers:`` (default: the number of cores)
       local workers with homes under ``~/.reductio/local/``.
    """
    found = settings(config)
    if config is not None:
        check_no_secrets(config)
    if found.get("workers"):
        log.debug("workers from the reductio config key")
        return _checked([_from_mapping(entry, f"worker {i}") for i, entry in enumerate(found["workers"])], config)
    for path in (Path(WORKERS_CFG), Path(os.path.expanduser(DEFAULT_HOME)) / WORKERS_CFG):
        if path.is_file():
            log.debug("workers from %s", path)
            return _checked(read_workers_cfg(path), config)
    count = found.get("local_workers") or os.cpu_count() or 1
    root = os.path.expanduser(os.path.join(DEFAULT_HOME, "local"))
    log.debug("%d local workers under %s", count, root)
    return [WorkerSpec(name=f"local-{i}", home=os.path.join(root, f"worker-{i}")) for i in range(count)]


def workers_from_hosts(hosts: str) -> List[dict]:
    """``-H user@host:port,...`` as worker settings, named by host (and port when needed).

    Each name is read by fabric's own ``derive_shorthand``, as ``fab -H`` reads it: an IPv6
    address is written bare (``fe80::1``, ``me@::1``) and takes no port there.
    """
    entries = []
    for item in filter(None, (part.strip() for part in hosts.split(","))):
        if "[" in item or "]" in item:
            raise ConfigError(f"-H: cannot read host {item!r}: Fabric's host strings take no brackets; write an IPv6"
                              " address bare (me@fe80::1), and give a worker its port in workers.cfg (port =)")
        try:
            found = derive_shorthand(item)
        except ValueError:
            found = {}
        if not found.get("host"):
            raise ConfigError(f"-H: cannot read host {item!r}; use host, user@host or user@host:port")
        entries.append({"host": found["host"], "port": found["port"], "username": found["user"]})
    hosts_seen = [entry["host"] for entry in entries]
    for entry in entries:
        repeated = hosts_seen.count(entry["host"]) > 1
        host = f"[{entry['host']}]" if ":" in entry["host"] else entry["host"]
        entry["name"] = f"{host}:{entry['port'] or 22}" if repeated else entry["host"]
        if repeated:
            entry["home"] = f"{DEFAULT_HOME}/{entry['port'] or 22}"
    return entries


def check_no_secrets(config) -> None:
    """Refuse SSH passwords written into Fabric/invoke config files (prompts are fine)."""
    for level in ("_system", "_user", "_project", "_runtime", "_env"):
        data = getattr(config, level, None) or {}
        kwargs = data.get("connect_kwargs") or {}
        secrets = sorted(key for key in _SECRETS if key in kwargs)
        if secrets:
            raise ConfigError(
                f"connect_kwargs {', '.join(secrets)} found in {level.strip('_')} config; reductio never reads"
                " passwords from config files: use an SSH key or ssh-agent"
            )


def read_workers_cfg(path: Path) -> List[WorkerSpec]:
    """Parse a workers.cfg: one INI section per worker, in order."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path, encoding="utf-8")
    except configparser.Error as err:
        raise ConfigError(f"{path}: {err.message.splitlines()[0]}") from None
    if not parser.sections():
        raise ConfigError(f"{path} names no workers; add a [name] section per worker")
    return [_from_mapping(dict(parser[name], name=name), f"{path} [{name}]") for name in parser.sections()]


def _from_mapping(entry, where: str) -> WorkerSpec:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a mapping of settings, got {entry!r}")
    keys = set(entry) - {"name"}
    secrets = keys & _SECRETS
    if secrets:
        raise ConfigError(
            f"{where}: {', '.join(sorted(secrets))} found; reductio never reads passwords from"
            " config files: use an SSH key (key_filename) or ssh-agent"
        )
    unknown = keys - _KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(sorted(unknown))};"
                          f" known: {', '.join(sorted(_KEYS))}")
    local = _flag(entry["local"], f"{where}: local") if entry.get("local") not in (None, "") else False
    processes = (_whole(1)(entry["processes"], f"{where}: processes")
                 if entry.get("processes") not in (None, "") else None)
    host = entry.get("host")
    if not local and not host:
        raise ConfigError(f"{where}: give a host, or local = yes for a local worker")
    if local and host:
        raise ConfigError(f"{where}: local = yes and a host; a worker is either local or reached over SSH, not both")
    name = str(entry.get("name") or host)
    home = str(entry.get("home") or (os.path.join(DEFAULT_HOME, "local", name) if local else DEFAULT_HOME))
    if local:
        return WorkerSpec(name=name, home=os.path.abspath(os.path.expanduser(home)), processes=processes,
                          python=entry.get("python") or None)  # default: the head's own interpreter
    try:
        port = int(entry["port"]) if entry.get("port") not in (None, "") else None
    except ValueError:
        raise ConfigError(f"{where}: port must be a number, not {entry['port']!r}") from None
    return WorkerSpec(
        name=name, home=home, host=str(host), port=port,
        username=entry.get("username") or None,
        key_filename=os.path.expanduser(entry["key_filename"]) if entry.get("key_filename") else None,
        python=entry.get("python") or None,
        authorized_keys=entry.get("authorized_keys") or None,
        processes=processes,
    )


def _checked(specs: List[WorkerSpec], config=None) -> List[WorkerSpec]:
    names = [spec.name for spec in specs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"worker names must be unique; repeated: {', '.join(duplicates)}")
    homes = [(spec.host, spec.port, spec.home) for spec in specs]
    if len(set(homes)) != len(homes):
        raise ConfigError("two workers share one host and home; give each its own home")
    _check_one_name_per_account(specs, config)
    return specs


def _check_one_name_per_account(specs: List[WorkerSpec], config) -> None:
    """Refuse two names for one account on one machine (localhost and 127.0.0.1, a name and its address)
    sharing a home: each would take the other's files for its own."""
    logins = {}
    for spec in specs:
        if not spec.is_local:
            hostname, port, user = _login(spec, config)
            logins.setdefault((port, user, spec.home), []).append((spec, hostname))
    for (port, user, home), group in logins.items():
        seen = {}
        for spec, hostname in group if len(group) > 1 else ():
            for address in _addresses(hostname, port):
                other = seen.setdefault(address, spec)
                if other is not spec:
                    raise ConfigError(
                        f"workers {other.name} and {spec.name} are one machine ({address} port {port}, user {user})"
                        f" and would share the home {home}; name the machine once, or give each worker its own"
                        " home in workers.cfg (home =)")


def _login(spec: WorkerSpec, config) -> tuple:
    """(host name, port, user) an SSH worker logs in with, as Fabric resolves them (~/.ssh/config included)."""
    ssh_config = getattr(config, "base_ssh_config", None)
    found = ssh_config.lookup(spec.host) if ssh_config is not None else {}
    port = spec.port or found.get("port") or getattr(config, "port", None) or 22
    user = spec.username or found.get("user") or getattr(config, "user", None) or getpass.getuser()
    return found.get("hostname", spec.host), int(port), str(user)


HERE = frozenset(["this machine"])


def machine_of(spec: WorkerSpec, config) -> frozenset:
    """The addresses of the machine a worker runs on, as far as the head can tell: HERE for this one, the host
    name as written when it does not resolve. Two workers share a machine when theirs meet."""
    if spec.is_local:
        return HERE
    hostname, port, _ = _login(spec, config)
    found = _addresses(hostname, port)
    if found and all(address.startswith("127.") or address == "::1" for address in found):
        return HERE
    return found or frozenset([hostname.lower()])


@functools.lru_cache(maxsize=None)
def _addresses(host: str, port: int) -> frozenset:
    """The addresses a host name stands for (looked up once a run); none when it does not resolve."""
    try:
        return frozenset(info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
    except (OSError, UnicodeError):  # unknown now: connecting will say so, naming the worker
        return frozenset()


def settings(config) -> dict:
    """The ``reductio:`` key of invoke/Fabric config, checked: the one place reductio's settings are read.

    A misspelled name or a bad value is refused here, on the head, before a
    step starts, rather than ignored or found by a worker halfway through.
    """
    found = config.get("reductio") if config is not None else None
    if found is None:
        return {}
    if not hasattr(found, "get"):
        raise ConfigError(f"the reductio config key must be a mapping, not {found!r}")
    names = {str(name) for name in found.keys()}  # YAML may read a key as a number or a bool
    secrets = sorted(names & _SECRETS)
    if secrets:
        raise ConfigError(f"reductio.{secrets[0]} found; reductio never reads passwords from config files:"
                          " use an SSH key or ssh-agent")
    unknown = sorted(names - set(_SETTINGS))
    if unknown:
        raise ConfigError(f"unknown reductio setting(s) {', '.join(unknown)}; known: {', '.join(sorted(_SETTINGS))}")
    return {key: _SETTINGS[key](value, f"reductio.{key}") for key, value in found.items() if value is not None}


def _whole(minimum: int):
    def check(value, what: str) -> int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{what} must be a whole number, not {value!r}")
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{what} must be a whole number, not {value!r}") from None
        if number < minimum:
            raise ConfigError(f"{what} must be at least {minimum}, not {number}")
        return number
    return check


def _seconds(minimum: float, above: bool = False):
    def check(value, what: str) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = float("nan")
        within = number > minimum if above else number >= minimum
        if isinstance(value, bool) or not math.isfinite(number) or not within:
            bound = f"more than {minimum:g}" if above else f"at least {minimum:g}"
            raise ConfigError(f"{what} must be a number of seconds, {bound}, not {value!r}")
        return number
    return check


def _flag(value, what: str) -> bool:
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in ("1", "yes", "true", "on"):
        return True
    if word in ("0", "no", "false", "off"):
        return False
    raise ConfigError(f"{what} must be true or false, not {value!r}")


def _size(value, what: str) -> str:
    if not SIZE.fullmatch(str(value)):
        raise ConfigError(f"{what} must be a size like 256M, 2G or 10%, not {value!r}")
    return str(value)


def _bytes(value, what: str) -> int:
    """A byte count: a whole number, or one with K, M or G (powers of 1024)."""
    text = str(value).strip()
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    number, unit = (text[:-1], units[text[-1].upper()]) if text[-1:].upper() in units else (text, 1)
    if isinstance(value, bool) or not number.isdigit() or int(number) < 1:
        raise ConfigError(f"{what} must be a number of bytes like 1000, 512K or 64M, not {value!r}")
    return int(number) * unit


def _log_path(value, what: str) -> str:
    path = os.path.expanduser(str(value))
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ConfigError(f"{what}: the folder of {value} does not exist ({folder})")
    return path


def _as_is(value, what: str):
    return value


def _folder(value, what: str) -> str:
    return os.path.expanduser(str(value))


_SETTINGS = {
    "workers": _as_is,  # checked by load_workers, entry by entry
    "local_workers": _whole(1), "processes": _whole(1), "combine_limit": _whole(1), "sort_parallel": _whole(1),
    "retries": _whole(0), "retry_delay": _seconds(0), "progress_interval": _seconds(0, above=True),
    "dead_after": _seconds(0, above=True), "stuck_after": _seconds(0, above=True), "scatter_streams": _whole(1),
    "sort_buffer": _size, "max_record": _bytes, "compress": _flag, "force": _flag, "log": _log_path,
    "wheelhouse": _folder, "max_unpacked": _bytes, "max_members": _whole(1), "slow_command": _seconds(0),
}
