"""How workers reach each other for scatter: a cluster key and pinned host keys.

``setup`` makes one ed25519 key on the head (``~/.reductio/cluster_key``),
copies it into every worker's home (mode 0600), authorizes its public half
on every SSH worker, and writes into every home a known_hosts holding the
SSH workers' host keys exactly as the head verified them. A worker's ssh
then trusts nothing else: an unknown or changed host key stops the scatter.
The key is authorized restricted and forced to the gate (gate.py): with it,
a worker can deliver scatter files into the homes of that account and do
nothing else. Its line serves every home any setup authorized it for; a
new key takes its homes from the lines of earlier ones, and ``revoke``
takes the cluster's homes from every key (authorized_keys.py).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Dict, List

from reductio.errors import ReductioError
from reductio.head.packaging import push
from reductio.wire.layout import CLUSTER_KEY, KNOWN_HOSTS

HEAD_KEY = "~/.reductio/cluster_key"
DEFAULT_AUTHORIZED_KEYS = "~/.ssh/authorized_keys"


def cluster_key() -> Path:
    """The head's cluster key, made on first use; its public half sits beside it (.pub)."""
    path = Path(os.path.expanduser(HEAD_KEY))
    if not path.exists():
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key = Ed25519PrivateKey.generate()
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption())
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        descriptor = os.open(str(path) + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as out:
            out.write(private)
        Path(str(path) + ".pub").write_bytes(public + b" reductio-cluster\n")
        os.replace(str(path) + ".tmp", path)
    return path


def install_trust(cluster) -> None:
    """Give every worker the cluster key and the SSH workers' pinned host keys; authorize the key, gated."""
    remote = [w for w in cluster.workers if not w.is_local]
    if not remote:
        return
    key = cluster_key()
    public = Path(str(key) + ".pub").read_text().strip()
    known = "".join(w.host_key_line() for w in remote)
    with tempfile.TemporaryDirectory(prefix="reductio-trust-") as scratch:
        known_file = Path(scratch) / KNOWN_HOSTS
        known_file.write_text(known)

        def give(worker):
            push(worker, key, f"{worker.home.rstrip('/')}/{CLUSTER_KEY}")
            push(worker, known_file, f"{worker.home.rstrip('/')}/{KNOWN_HOSTS}")

        cluster.each("setup (cluster key)", give)
    accounts: Dict[tuple, List] = {}
    for worker in remote:
        accounts.setdefault(_account(worker), []).append(worker)
    cluster.each("setup (cluster key)", lambda w: _authorize(w, public, accounts[_account(w)]), remote)


def _account(worker) -> tuple:
    """Workers whose homes one authorized_keys file may serve: the same user and file, on any machine,
    since homes are often shared between machines. The user is the one the head logged in as, ~/.ssh/config's
    User included: workers.cfg may name none."""
    return (worker.resolved()[2], worker.spec.authorized_keys or DEFAULT_AUTHORIZED_KEYS)


def _authorize(worker, public: str, workers: list) -> None:
    """Authorize the cluster key on ``worker`` for the homes of ``workers`` (its account), forced to the gate.

    Every worker of the account asks for the same homes: on a shared file
    the requests merge into one line, on separate files each gets it.
    """
    path = worker.spec.authorized_keys or DEFAULT_AUTHORIZED_KEYS
    params = {"path": path, "public": public, "homes": [w.home for w in workers],
              "pythons": [f"{w.venv}/bin/python" for w in workers]}
    try:
        worker.step("authorize", params)
    except ReductioError as err:
        raise ReductioError(f"cannot authorize the cluster key in {path}: {err}") from None


def revoke_trust(cluster, everywhere: bool = False) -> Dict[str, int]:
    """Take the cluster's homes from every cluster key's line on its SSH workers' accounts (``everywhere``:
    remove every cluster key's line there, whatever homes it serves); per worker, the lines removed or cut."""
    remote = [w for w in cluster.workers if not w.is_local]
    accounts: Dict[tuple, List] = {}
    for worker in remote:
        accounts.setdefault(_account(worker), []).append(worker)

    def revoke(worker):
        path = worker.spec.authorized_keys or DEFAULT_AUTHORIZED_KEYS
        homes = None if everywhere else [w.home for w in accounts[_account(worker)]]
        try:
            return worker.step("authorize", {"path": path, "public": None, "homes": homes})["removed"]
        except ReductioError as err:
            raise ReductioError(f"cannot revoke the cluster key in {path}: {err}") from None

    return cluster.each("revoke", revoke, remote)
