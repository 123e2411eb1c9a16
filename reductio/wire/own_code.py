"""reductio's own code as a digest both sides take alike, so that a worker never runs other code than the head's.

A head upgraded (``pip install -U reductio``) without ``setup`` run again
leaves its SSH workers on the reductio an earlier setup installed: their
steps would run the old rules (sorting, publishing, the gate's permit)
beside the head's new ones. Every command carries the head's digest; a
worker whose own differs refuses the step, saying to run setup.
"""

from __future__ import annotations

import functools
import hashlib
import os

import reductio

MISMATCH = "this worker's reductio is not the head's (installed by an earlier setup): run setup"


@functools.lru_cache(maxsize=None)
def digest() -> str:
    """SHA-256 over the package's modules (their paths and bytes), in one order everywhere."""
    root = os.path.dirname(os.path.abspath(reductio.__file__))
    taken = hashlib.sha256()
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(name for name in subfolders if _package(folder, name))
        for name in sorted(names):
            path = os.path.join(folder, name)
            if name.endswith(".py") and os.path.isfile(path):  # as the workers' sdist: an editor's .#x.py link is none
                with open(path, "rb") as module:
                    code = module.read()
                relative = os.path.relpath(path, root).replace(os.sep, "/").encode("utf-8")
                taken.update(b"%d %s %d\n" % (len(relative), relative, len(code)) + code)
    return taken.hexdigest()


def is_digest(text: str) -> bool:
    """Whether ``text`` is written as digest() writes one (a worker's argv holds nothing else: no parameters)."""
    return len(text) == 64 and not set(text) - set("0123456789abcdef")


def _package(folder: str, name: str) -> bool:
    """Whether a subfolder is a package as the workers' setup.py finds them (setuptools' find_packages: a name
    without a dot, holding __init__.py); what is not one never reaches a worker (.ipynb_checkpoints, notes)."""
    return "." not in name and os.path.isfile(os.path.join(folder, name, "__init__.py"))
