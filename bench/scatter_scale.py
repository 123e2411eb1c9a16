"""Scatter at cluster size: the anagram job over the words file on 16 and 32 SSH workers on loopback.

    python3 bench/scatter_scale.py [--workers 2,4,8,16,32] [--words /usr/share/dict/words] [--quick-shell]
                                   [--record]

Starts N sshd on 127.0.0.1 as the test suite does (tests/sshd.py), sets the
workers up in a temporary HOME, runs load -> map -> scatter -> sort -> reduce
-> merge with the job log on, then the same job again with every step up to
date. Prints, per cluster size, each step's seconds (the head's, from the
job log), scatter's connections, and the up-to-date re-run's seconds. This
is the measurement behind "a scatter that scales" (bench README); it needs
minutes and far more sshd than a test should start, so it is not a test.
``--record`` keeps each result in bench/scale.json (by cluster size and
shell, the newest replacing an older one) and writes them as the "Scatter at
cluster size" section of bench/RESULTS.md, which bench/run.py keeps.

Every command ssh starts runs the account's login shell first. Here that is
root's bash, which reads ~/.bashrc for ssh commands and runs ``pyenv init``
there: 0.15 s of CPU per command, more than reductio's own cost of one.
``--quick-shell`` measures workers whose shell starts quickly, as a worker
account with the usual non-interactive guard in its .bashrc would: the
bench's sshd sets SHLVL=1 for its sessions, and bash reads no .bashrc for a
shell that is not the first.
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
BENCH = REPO / "bench"
SECTION = "## Scatter at cluster size"
sys.path.insert(0, str(REPO / "tests"))

from sshd import SshCluster  # noqa: E402

FABFILE = REPO / "tests" / "_support" / "wordjobs" / "fabfile.py"  # its anagrams task


def measure(count: int, words: Path, streams: Optional[int], quick_shell: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="reductio-scale-") as scratch:
        root = Path(scratch)
        (root / "sshd").mkdir()
        cluster = SshCluster(root / "sshd", count)
        if quick_shell:
            for daemon in cluster.daemons:
                daemon.config.write_text(daemon.config.read_text() + "SetEnv SHLVL=1\n")
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
    parser.add_argument("--workers", default="2,4,8,16,32", help="cluster sizes, comma-separated")
    parser.add_argument("--words", default="/usr/share/dict/words", help="the input")
    parser.add_argument("--streams", type=int, help="scatter_streams (default: reductio's own choice)")
    parser.add_argument("--quick-shell", action="store_true", help="workers whose login shell reads no .bashrc")
    parser.add_argument("--record", action="store_true", help="keep the results in bench/scale.json and RESULTS.md")
    args = parser.parse_args()
    for count in (int(n) for n in args.workers.split(",")):
        result = measure(count, Path(args.words), args.streams, args.quick_shell)
        if args.record:
            record(dict(result, shell="quick" if args.quick_shell else "root's", streams=args.streams))
        steps = ", ".join(f"{step} {seconds:.1f} s" for step, seconds in result["steps"].items() if seconds)
        shell = "quick shell" if args.quick_shell else "root's shell"
        print(f"{count} workers, {shell}, scatter_streams {args.streams or 'unset'}: setup {result['setup']:.1f} s;"
              f" job {result['job']:.1f} s ({steps});"
              f" scatter opened {result['connections']} connections for {result['bytes crossed']:,} bytes;"
              f" re-run with every step up to date {result['up to date']:.1f} s", flush=True)


def record(result: dict) -> None:
    """Keep ``result`` in bench/scale.json, then rewrite RESULTS.md's section from all kept results."""
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    result = dict(result, commit=commit, measured=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    path = BENCH / "scale.json"
    kept = json.loads(path.read_text()) if path.exists() else []
    same = (result["workers"], result["shell"], result["streams"])
    kept = [r for r in kept if (r["workers"], r["shell"], r["streams"]) != same] + [result]
    path.write_text(json.dumps(sorted(kept, key=lambda r: (r["shell"], r["workers"])), indent=1) + "\n")
    results = BENCH / "RESULTS.md"
    text = results.read_text() if results.exists() else "# Benchmark results\n"
    before = text.split(SECTION)[0].rstrip("\n")
    results.write_text(before + "\n\n" + "\n".join(section()) + "\n")


def section() -> list:
    """The RESULTS.md section of every kept scale result (bench/run.py calls it too, to keep it)."""
    path = BENCH / "scale.json"
    if not path.exists():
        return []
    lines = [SECTION, "", "`python3 bench/scatter_scale.py --record`: the anagram job over the words file on N SSH"
             " workers (sshd on loopback, this machine), then again with every step up to date. \"root's\" shell"
             " reads ~/.bashrc (pyenv init) for every ssh command; \"quick\" reads none (`--quick-shell`).", "",
             "| workers | shell | scatter s | connections | job s | all up to date s | setup s | commit | measured |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in json.loads(path.read_text()):
        shell = r["shell"] + (f", scatter_streams {r['streams']}" if r["streams"] else "")
        lines.append(f"| {r['workers']} | {shell} | {r['steps'].get('scatter', 0):.1f} | {r['connections']}"
                     f" | {r['job']:.1f} | {r['up to date']:.1f} | {r['setup']:.1f} | {r['commit']}"
                     f" | {r['measured']} |")
    return lines + [""]


if __name__ == "__main__":
    main()
