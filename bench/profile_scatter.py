"""Scatter over SSH alone, timed, and optionally traced: where its seconds go.

    bench/.venv/bin/python bench/profile_scatter.py [--times 3] [--trace]

Needs the `pairs` dataset a benchmark run leaves on the SSH workers
(`python3 bench/run.py --sizes 200M --only "reductio ssh"`), and strace
for ``--trace``. Starts the benchmark's two sshd as bench/run.py does,
runs `scatter pairs here --force` ``--times`` times and prints each
worker's sending seconds and the rate (MB crossed / the longest sender),
as RESULTS.md reads them. With ``--trace``, one more scatter runs under
strace following both sshd, and every program they started is counted:
ssh clients, worker steps, shells. This is how a worker was found sending
its own partition to itself (bench README, "Scatter over SSH").
"""

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import run

WORKER_STEP = re.compile(r'"reductio\.worker", "(\w+)"')
PROGRAM = re.compile(r'execve\("([^"]+)"')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--times", type=int, default=3, help="scatters to time")
    parser.add_argument("--trace", action="store_true", help="then one scatter under strace, its programs counted")
    args = parser.parse_args()
    run.setup_for("reductio ssh")
    try:
        with tempfile.TemporaryDirectory() as scratch:
            for _ in range(args.times):
                print(scatter(Path(scratch)), flush=True)
            if args.trace:
                traced(Path(scratch))
    finally:
        for cluster in run._SSHD:
            cluster.stop()


def scatter(scratch: Path) -> str:
    """One scatter of the SSH workers' ``pairs``; a line saying how long each worker sent and at what rate."""
    log, config = scratch / "log.jsonl", scratch / "config.json"
    log.unlink(missing_ok=True)
    config.write_text(json.dumps({"reductio": {"log": str(log)}}))
    home = run.OUT / "home-ssh"
    started = time.time()
    subprocess.run([str(run.VENV / "bin" / "reductio"), "--config", str(config), "-f", str(run.BENCH / "fabfile.py"),
                    "scatter", "pairs", "here", "--force"], cwd=home / "work", check=True, stdout=subprocess.DEVNULL,
                   env=dict(os.environ, HOME=str(home), PYTHONPATH=str(run.BENCH)))
    workers = json.loads(log.read_text().splitlines()[-1])["workers"]
    crossed = sum(w["bytes crossed"] for w in workers.values()) / 1e6
    longest = max(w["seconds"] for w in workers.values())
    sending = ", ".join(f"{name} {w['seconds']:.2f} s" for name, w in workers.items())
    return (f"scatter {time.time() - started:.2f} s: sending {sending}; {crossed:.1f} MB crossed,"
            f" {crossed / longest:.0f} MB/s")


def traced(scratch: Path) -> None:
    """One scatter with strace following both sshd: the programs they started, counted."""
    trace = scratch / "trace.txt"
    pids = [flag for daemon in run._SSHD[0].daemons for flag in ("-p", str(daemon.process.pid))]
    strace = subprocess.Popen(["strace", "-f", "-z", "-e", "trace=execve", "-o", str(trace), *pids],
                              stderr=subprocess.DEVNULL)
    time.sleep(1)  # attached
    try:
        print("under strace (slower):", scatter(scratch))
    finally:
        strace.terminate()
        strace.wait()
    programs, steps = collections.Counter(), collections.Counter()
    for line in trace.read_text().splitlines():
        step = WORKER_STEP.search(line)
        if step:
            steps[step.group(1)] += 1
        found = PROGRAM.search(line)
        if found:
            programs[os.path.basename(found.group(1))] += 1
    print("worker steps started:", ", ".join(f"{name} x{count}" for name, count in sorted(steps.items())))
    print("programs started:", ", ".join(f"{name} x{count}" for name, count in programs.most_common()))


if __name__ == "__main__":
    sys.exit(main())
