"""A mapper with a stray print() per record against the same mapper without it, on 2 local workers.

    python3 bench/stray_print.py [--records 400000] [--repeat 3]

A user's debugging print goes to the worker's stdout, which the head reads
as the step's reply channel: it must cost time in proportion to what is
printed, not grow with everything printed before (the head once re-joined
its whole buffer per chunk: 1.6 s at 100k records, 25 s at 400k). Prints
the map step's seconds (the head's, from the job log) for each mapper, the
median of ``--repeat`` tries taken in turns, and their ratio; the target
(issue: the head against a bad worker) is at most 2x. The workers get this
shell's environment: with PYTHONUNBUFFERED=1 every print would be a system
call into the pipe the head reads, were the worker's stdout not buffered
during user code (reductio.worker.buffering).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

MAPPERS = '''\
def quiet(key, value):
    yield key, "1"


def noisy(key, value):
    print("seen", key)  # the stray print
    yield key, "1"
'''

FABFILE = '''\
from fabric import task
from reductio.tasks import *  # noqa: F401,F403
from reductio.tasks import load, map


@task
def job(c, corpus, mapper):
    load(c, corpus, "corpus")
    map(c, mapper, "corpus", "pairs", force=True)
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=400_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="reductio-stray-") as scratch:
        root = Path(scratch)
        (root / "home").mkdir()
        (root / "strays.py").write_text(MAPPERS)
        (root / "fabfile.py").write_text(FABFILE)
        (root / "setup.py").write_text("from setuptools import setup\nsetup(name='strays', py_modules=['strays'])\n")
        corpus = root / "corpus.txt"
        corpus.write_text("".join(f"key{i % 5000}\tvalue {i}\n" for i in range(args.records)))
        env = dict(os.environ, HOME=str(root / "home"))
        config = root / "config.json"
        log = root / "job.jsonl"
        config.write_text(json.dumps({"reductio": {"local_workers": 2, "log": str(log)}}))
        base = ["reductio", "--config", str(config), "-f", str(root / "fabfile.py")]
        subprocess.run([*base, "setup"], cwd=root, env=env, check=True, capture_output=True)
        seconds = {"quiet": [], "noisy": []}
        for _ in range(args.repeat):
            for mapper in seconds:
                log.unlink(missing_ok=True)
                subprocess.run([*base, "job", "--corpus", str(corpus), "--mapper", f"strays.{mapper}"], cwd=root,
                               env=env, check=True, capture_output=True)
                steps = [json.loads(line) for line in log.read_text().splitlines()]
                seconds[mapper].append(next(step["seconds"] for step in steps if step["step"] == "map"))
    quiet, noisy = statistics.median(seconds["quiet"]), statistics.median(seconds["noisy"])
    print(f"{args.records:,} records on 2 local workers, median of {args.repeat}:")
    print(f"  map without a print: {quiet:.2f} s {seconds['quiet']}")
    print(f"  map with a print per record: {noisy:.2f} s {seconds['noisy']}")
    print(f"  ratio {noisy / quiet:.2f}x (target: at most 2x)")


if __name__ == "__main__":
    main()
