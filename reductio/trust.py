"""How workers reach each other for scatter: a cluster key and pinned host keys.

``setup`` makes one ed25519 key on the head (``~/.reductio/cluster_key``),
copies it into every worker's home (mode 0600), authorizes its public half
on every SSH worker, and writes into every home a known_hosts holding the
SSH workers' host keys exactly as the head verified them. A worker's ssh
then trusts nothing else: an unknown or changed host key stops the scatter.
"""

from __future__ import annotations

import os
import shlex
import tempfile
from pathlib import Path

from reductio.errors import ReductioError
from reductio.packaging import push
from reductio.protocol import shell_path
from reductio.store import CLUSTER_KEY, KNOWN_HOSTS

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
    """Give every worker the cluster key and the SSH workers' pinned host keys."""
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
            if not worker.is_local:
                _authorize(worker, public)

        cluster.each("setup (cluster key)", give)


def _authorize(worker, public: str) -> None:
    """Append the cluster's public key to the worker's authorized_keys, once."""
    path = worker.spec.authorized_keys or DEFAULT_AUTHORIZED_KEYS
    target, folder = shell_path(path), shell_path(os.path.dirname(path) or ".")
    line = shlex.quote(public)
    result = worker.run(
        f"umask 077 && mkdir -p {folder} && touch {target} &&"
        f" (grep -qxF {line} {target} || echo {line} >> {target})"
    )
    if result.exited != 0:
        raise ReductioError(f"cannot authorize the cluster key in {path}: {result.stderr.strip()[-300:]}")
