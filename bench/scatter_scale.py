"""Scatter at cluster size: the anagram job over the words file on 16 and 32 SSH workers on loopback.

    python3 bench/scatter_scale.py [--workers 16,32] [--words /usr/share/dict/words]

Starts N sshd on 127.0.0.1 as the test suite does (tests/sshd.py), sets the
workers up in a temporary HOME, runs load -> map -> scatter -> sort -> reduce
-> merge with the job log on, then the same job again with every step up to
date. Prints, per cluster size, each step's seconds (the head's, from the
job log), scatter's connections, and the up-to-date re-run's seconds. This
is the measurement behind "a scatter that scales" (bench README); it needs
minutes and far more sshd than a test should start, so it is not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from sshd import SshCluster  # noqa: E402

FABFILE = REPO / "tests" / "_support" / "wordjobs" / "fabfile.py"  # its anagrams task


def measure(count: int, words: Path, streams: Optional[int]) -> dict:
    with tempfile.TemporaryDirectory(prefix="reductio-scale-") as scratch:
        root = Path(scratch)
        (root / "sshd").mkdir()
        cluster = SshCluster(root / "sshd", count)
        cluster.start()
        try:
            home, work = root / "home", root / "work"
            (home / ".ssh").mkdir(parents=True)
            work.mkdir()
            (home / ".ssh" / "known_hosts").write_text(cluster.known_hosts())
            (work / "workers.cfg").write_text(cluster.workers_cfg(root / "homes", count=count))
            log = work / "job.jsonl"
            streams_setting = f"  scatter_streams: {streams}\n" if streams else ""
            (work / "fabric.yaml").write_text(f"reductio:\n  log: {log}\n{streams_setting}")
            env = dict(os.environ, HOME=str(home))
            reductio = [sys.executable, "-c", "from reductio.cli import program; program.run()"]

            def run(*args: str) -> float:
                started = time.time()
                argv = [*reductio, "--config", str(work / "fabric.yaml"), "-f", str(FABFILE), *args]
                done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True)
                if done.returncode != 0:
                    raise SystemExit(f"{count} workers: {' '.join(args)} failed:\n{done.stderr[-3000:]}")
                return time.time() - started

            setup = run("setup")
            first = run("anagrams", "--words", str(words), "--output", str(work / "classes.tsv"))
            steps = [json.loads(line) for line in log.read_text().splitlines()]
            again = run("anagrams", "--words", str(words), "--output", str(work / "classes.tsv"))
            scatter = next(record for record in steps if record["step"] == "scatter")
            return {
                "workers": count, "setup": setup, "job": first, "up to date": again,
                "steps": {record["step"]: record.get("seconds") for record in steps},
                "connections": sum(w.get("connections", 0) for w in scatter["workers"].values()),
                "bytes crossed": sum(w.get("bytes crossed", 0) for w in scatter["workers"].values()),
            }
        finally:
            cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="16,32", help="cluster sizes, comma-separated")
    parser.add_argument("--words", default="/usr/share/dict/words", help="the input")
    parser.add_argument("--streams", type=int, help="scatter_streams (default: reductio's own choice)")
    args = parser.parse_args()
    for count in (int(n) for n in args.workers.split(",")):
        result = measure(count, Path(args.words), args.streams)
        steps = ", ".join(f"{step} {seconds:.1f} s" for step, seconds in result["steps"].items() if seconds)
        print(f"{count} workers, scatter_streams {args.streams or 'unset'}: setup {result['setup']:.1f} s;"
              f" job {result['job']:.1f} s ({steps});"
              f" scatter opened {result['connections']} connections for {result['bytes crossed']:,} bytes;"
              f" re-run with every step up to date {result['up to date']:.1f} s", flush=True)


if __name__ == "__main__":
    main()
