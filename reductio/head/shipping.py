"""Files a command step needs, shipped to every worker once, named by their content.

``map(c, "| python3 tokens.py", ..., files=["tokens.py"])``: each file goes
to the worker's ``HOME/shipped/SHA256`` (layout.py) unless the step's check
found it there whole already, and the command finds it by its own name in
its working folder. The worker keeps a file only once its size and SHA-256
are right (packaging.push), and then marks it whole; one cut short is sent
again. A changed file is a new digest, so the step is redone.
Archives (``archives=["model.tar.gz#model"]``) travel the same way and are
unpacked on the worker (archives.py).
"""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path
from typing import Dict, Tuple

from reductio.errors import UserCodeError
from reductio.head.packaging import file_digest, push
from reductio.wire.layout import SHIPPED, WHOLE
from reductio.wire.streamspec import check_shipped_name


def digests(paths, taken: Dict[str, Tuple[Path, str]] = None, unpack: bool = False) -> Dict[str, Tuple[Path, str]]:
    """name -> (local path, SHA-256) of each file to ship (``PATH`` or ``PATH#NAME``); a name given twice (or
    already ``taken``) or a missing file is refused, and with ``unpack`` a file that is not an archive."""
    found: Dict[str, Tuple[Path, str]] = dict(taken or {})
    for given in paths or ():
        local, _, rename = str(given).partition("#")  # Hadoop's PATH#NAME: ship PATH under NAME
        path = Path(local).expanduser()
        if not path.is_file():
            raise UserCodeError(f"no file {local} to ship with the command")
        name = check_shipped_name(rename or path.name)
        if name in found:
            raise UserCodeError(f"two files to ship are called {name!r}: {found[name][0]} and {path}")
        if unpack:
            _check_archive(path)
        found[name] = (path, file_digest(path))
    return {name: found[name] for name in found if name not in (taken or {})}


def _check_archive(path: Path) -> None:
    """Refuse, on the head before shipping, a file that is neither a tar nor a zip archive."""
    if not (tarfile.is_tarfile(path) or zipfile.is_zipfile(path)):
        raise UserCodeError(f"{path} is not a tar or zip archive; ship it as a file instead")


def ship(cluster, survey, files: Dict[str, Tuple[Path, str]]) -> None:
    """Push each file a worker's check said it lacks into its home."""
    by_digest = {digest: path for path, digest in files.values()}

    def one(worker):
        for digest in survey.checks[worker.name].get("missing") or []:
            remote = f"{worker.home.rstrip('/')}/{SHIPPED}/{digest}"
            push(worker, by_digest[digest], remote, mode="400", digest=digest, marker=remote + WHOLE)

    lacking = [w for w in cluster.workers if survey.checks[w.name].get("missing")]
    if lacking:
        cluster.each("ship files", one, lacking)
