"""A task module imports on a worker without Fabric: stand-ins for fabric, invoke and reductio.tasks there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from reductio import tasks
from reductio.wire import standins

REPO = Path(__file__).resolve().parent.parent

TASK_MODULE = """\
from fabric import task
from invoke import Collection, Exit
from reductio.tasks import *


def pairs(word, value):
    for a, b in zip(word, word[1:]):
        yield a + b, "1"


@task
def do_stuff(c):
    raise Exit("never on a worker")


@task(help={"top": "how many"})
def show(c, top=10):
    pass
"""

# Run as a worker's Python is: no site-packages (so no Fabric, no invoke), reductio and the project importable.
ON_A_WORKER = """\
import sys
from reductio.wire.usercode import load_function
from reductio.errors import UserCodeError

for name in ("fabric", "invoke"):
    try:
        __import__(name)
    except ImportError:
        pass
    else:
        raise SystemExit(f"{name} is importable: this is not a worker's environment")
mapper = load_function("taskmodule.pairs")
print(list(mapper("abc", "")))
module = sys.modules["taskmodule"]
print(module.do_stuff.__name__, module.show.__name__, callable(module.do_stuff))
print(repr(module.Exit))
for name in ("map", "setup", "Collection"):
    try:
        getattr(module, name)(None)
    except UserCodeError as err:
        print(err)
print(sorted(sys.modules["reductio.tasks"].__all__))
print([name for name in ("paramiko", "cryptography", "reductio.head.cluster") if name in sys.modules])
"""


def test_a_module_holding_tasks_and_functions_imports_on_a_worker_with_no_fabric_or_invoke(tmp_path):
    (tmp_path / "taskmodule.py").write_text(TASK_MODULE)
    done = subprocess.run([sys.executable, "-S", "-c", ON_A_WORKER], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{tmp_path}"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "[('ab', '1'), ('bc', '1')]",
        "do_stuff show True",  # @task and @task(...) leave the function as it is
        "<invoke.Exit, the head's, not on this worker>",
        *(f"{name} belongs on the head: this worker runs only your functions, and has no Fabric or invoke"
          ' (README "Code on the workers")' for name in ("reductio.tasks.map", "reductio.tasks.setup",
                                                           "invoke.Collection")),
        str(sorted(tasks.__all__)),  # the task library's own names, read from its source
        "[]",  # nothing of the head's was imported
    ]


def test_where_fabric_and_invoke_are_installed_nothing_is_stood_in(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    standins.install()
    assert not [finder for finder in sys.meta_path if isinstance(finder, standins._StandIns)]

