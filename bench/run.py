"""The benchmark: reductio against its peers on one box, outputs checked identical, ratios in one run.

    python3 bench/run.py --sizes 20M,100M

Creates bench/.venv with reductio, dask[bag], mrjob and psutil; makes the
corpora in bench/out/; runs every contender on each workload and size; writes
bench/RESULTS.md. See bench/README.md for what is measured and the targets.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shlex
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
OUT = BENCH / "out"
VENV = BENCH / ".venv"
PY = VENV / "bin" / "python"
PYPY = shutil.which("pypy3")  # the PyPy rows' interpreter: local workers with python = pypy3, and its bare loop

# Each workload's keys in awk: EMIT(key) becomes a print (for sort | uniq -c) or a hash count.
AWK_BIGRAMS = (r'{ $0 = tolower($0); for (i = 1; i <= NF; i++) { w = $i; n = length(w);'
               r' for (j = 1; j < n; j++) { a = substr(w, j, 1); b = substr(w, j + 1, 1);'
               r' if (a ~ /[[:alpha:]]/ && b ~ /[[:alpha:]]/) EMIT } } }')
AWK_PAIRS = r'{ for (i = 1; i < NF; i++) EMIT }'
AWK_KEY = {AWK_BIGRAMS: "a b", AWK_PAIRS: '$i " " $(i + 1)'}
WORKLOADS = (("bigrams", "line_bigrams", AWK_BIGRAMS), ("shuffle-heavy", "word_pairs", AWK_PAIRS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20M", help="corpus sizes, comma-separated (e.g. 20M,100M,200M,1G)")
    parser.add_argument("--skip", default="", help="contenders to leave out, comma-separated (e.g. mrjob,dask)")
    parser.add_argument("--only", default="", help="contenders to run, comma-separated (e.g. 'reductio local,mrjob')")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds before a contender is stopped")
    parser.add_argument("--mrjob-max", default="1G", help="largest size mrjob runs at (it is very slow)")
    parser.add_argument("--workloads", default=",".join(w for w, _, _ in WORKLOADS),
                        help="workloads to run, comma-separated (bigrams,shuffle-heavy)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="measure each contender this many times, the contenders taking turns; a row is the median")
    args = parser.parse_args()
    if Path(sys.prefix).resolve() != VENV.resolve():  # measure from inside the benchmark's own venv
        prepare_venv()
        os.execv(str(PY), [str(PY), __file__, *sys.argv[1:]])
    workloads = [w for w in WORKLOADS if w[0] in args.workloads.split(",")]
    if not workloads:
        raise SystemExit(f"no workload in {args.workloads!r}: choose from {', '.join(w for w, _, _ in WORKLOADS)}")
    skip = set(filter(None, args.skip.split(",")))
    only = set(filter(None, args.only.split(",")))
    results = []
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    commit = measured_commit()
    for size_text in args.sizes.split(","):
        size = parse_size(size_text)
        corpus = make_corpus(size_text, size)
        skipped = skip | ({"mrjob"} if size > parse_size(args.mrjob_max) else set())
        for workload, mapper, awk in workloads:
            reference = reference_counts(corpus, mapper)
            chosen = list(contenders(workload, mapper, awk, corpus, skipped, only))
            tries = {name: [] for name, _ in chosen}
            for turn in range(1, args.repeat + 1):
                for name, command in chosen:
                    print(f"== {size_text} {workload} {name}" + (f", try {turn}" if args.repeat > 1 else ""),
                          flush=True)
                    result = measure(name, command, args.timeout)
                    output = read_output(name, result) if result["status"] == "ok" else None
                    result["identical"] = None if output is None else output == reference
                    print(json.dumps(result), flush=True)
                    tries[name].append(result)
                    if turn == args.repeat:
                        result = median(tries[name])
                        result.update(size=size_text, workload=workload, run=started, commit=commit,
                                      command=invocation())
                        results.append(result)
                        write_results(keep(results))  # after every contender: a stopped run keeps what it measured


def median(tries: list) -> dict:
    """One contender's row from its tries: the try of median wall time, or the first that failed.

    Its steps and CPU time come with it; memory is the largest of any try,
    and the row is identical only if every try's output was.
    """
    failed = [t for t in tries if t["status"] != "ok"]
    row = dict(failed[0] if failed else sorted(tries, key=lambda t: t["wall"])[(len(tries) - 1) // 2])
    for memory in ("peak_rss_mb", "reductio_rss_mb", "head_rss_mb"):
        row[memory] = max((t[memory] for t in tries if t[memory] is not None), default=None)
    row["identical"] = None if failed else all(t["identical"] for t in tries)
    if len(tries) > 1:
        row["walls"] = [t["wall"] for t in tries]
    return row


def measured_commit() -> str:
    """The checkout's commit, "+changes" when files other than the benchmark's own results differ from it."""
    git = ["git", "-C", str(REPO)]
    commit = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    changed = subprocess.run(git + ["status", "--porcelain", "--untracked-files=no", "--", ".",
                                    ":!bench/RESULTS.md", ":!bench/results.json"],
                             capture_output=True, text=True).stdout
    return (commit or "?") + ("+changes" if changed.strip() else "")


def invocation() -> str:
    """This run's arguments, quoted as they would be typed."""
    return " ".join(shlex.quote(word) for word in sys.argv[1:])


def keep(results: list) -> list:
    """This run's rows, and the tables of earlier runs (bench/results.json) that this run does not replace.

    A table is one run's rows for one workload at one size. A run replaces an
    earlier table only once it has measured every contender in it; a partial
    run (mrjob alone, with the reductio rows it is compared with) is a table
    of its own beside the earlier one. Ratios and targets are only ever taken
    within one table or run; across sizes only memory is compared, which the
    machine's noise barely moves.
    """
    saved = BENCH / "results.json"  # committed with RESULTS.md, so a later run can add to it
    runs = {r["run"] for r in results}
    measured = {(r["size"], r["workload"], r["name"]) for r in results}
    earlier = {}
    for r in json.loads(saved.read_text()) if saved.exists() else []:
        if r["run"] not in runs:
            earlier.setdefault((r["size"], r["workload"], r["run"]), []).append(r)
    kept = [r for rows in earlier.values() if not all((r["size"], r["workload"], r["name"]) in measured for r in rows)
            for r in rows]
    order = [workload for workload, _, _ in WORKLOADS]
    merged = sorted(kept + results, key=lambda r: (parse_size(r["size"]), order.index(r["workload"]), r["run"]))
    saved.write_text(json.dumps(merged, indent=1))
    return merged


def parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)([KMG]?)", text.strip().upper())
    if not match:
        raise SystemExit(f"bad size {text!r}: use a number with K, M or G")
    return int(match.group(1)) * {"": 1, "K": 10**3, "M": 10**6, "G": 10**9}[match.group(2)]


def prepare_venv() -> None:
    """The benchmark's own environment: reductio from this checkout and the peers."""
    if not PY.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    check = subprocess.run([str(PY), "-c", "import reductio, dask.bag, mrjob, psutil, pandas"], capture_output=True)
    if check.returncode != 0:
        subprocess.run([str(PY), "-m", "pip", "install", "-q", "-e", str(REPO), "dask[bag]", "pandas", "mrjob",
                        "psutil"], check=True)


def make_corpus(label: str, size: int) -> Path:
    """ASCII words only, so awk in the C locale and Python agree on letters and case."""
    OUT.mkdir(exist_ok=True)
    path = OUT / f"corpus-{label}.txt"
    subprocess.run([str(PY), str(BENCH / "corpus.py"), str(path), str(size)], check=True)
    return path


def reference_counts(corpus: Path, mapper: str) -> dict:
    cached = OUT / f"{corpus.stem}-{mapper}.reference.json"
    if cached.exists():
        return json.loads(cached.read_text())
    sys.path.insert(0, str(BENCH))
    import jobs

    counts = Counter()
    function = getattr(jobs, mapper)
    with open(corpus, encoding="utf-8") as lines:
        for line in lines:
            for key, _ in function(line.rstrip("\n")):
                counts[key] += 1
    cached.write_text(json.dumps(counts))
    return dict(counts)


def contenders(workload: str, mapper: str, awk: str, corpus: Path, skip: set, only: set):
    """(name, shell command) per contender; each writes key<TAB>count lines (or uniq -c lines) to its output."""
    env_py = str(PY)
    out = OUT / "outputs"
    out.mkdir(exist_ok=True)
    emit = awk.replace("EMIT", f"print {AWK_KEY[awk]}")
    hashed = awk.replace("EMIT", f"c[{AWK_KEY[awk]}]++") + r' END { for (k in c) print k "\t" c[k] }'
    intermediate = OUT / f"{corpus.stem}-{workload}.intermediate"
    table = {
        "reductio local": f"{reductio_command('local', corpus, out / 'reductio-local', mapper, False)}",
        "reductio local +combiner": f"{reductio_command('local', corpus, out / 'reductio-local-c', mapper, True)}",
        "reductio local, own reducer": reductio_command('local', corpus, out / 'reductio-local-own', mapper, False,
                                                        reducer="jobs.count"),
        "reductio local +combiner, own reducer": reductio_command('local', corpus, out / 'reductio-local-c-own', mapper,
                                                                  True, reducer="jobs.count"),
        "reductio ssh": f"{reductio_command('ssh', corpus, out / 'reductio-ssh', mapper, False)}",
        "reductio 1 worker": f"{reductio_command('one', corpus, out / 'reductio-one', mapper, False)}",
        "reductio 1 worker, 1 process": reductio_command('one', corpus, out / 'reductio-one-p1', mapper, False, 1),
        "reductio pypy": reductio_command('pypy', corpus, out / 'reductio-pypy', mapper, False),
        "reductio pypy +combiner": reductio_command('pypy', corpus, out / 'reductio-pypy-c', mapper, True),
        # map as one PyPy process on one core, as the bare loop runs: the framework's cost alone, not two at once
        "reductio pypy 1 worker, 1 process": reductio_command('pypy-one', corpus, out / 'reductio-pypy-one-p1', mapper,
                                                              False, 1),
        # the floor of map on each interpreter: read the file, call the mapper, count with collections.Counter
        "bare loop": f"{env_py} {BENCH / 'counter.py'} {mapper} {corpus} {out / 'bare-loop'}",
        "bare loop pypy": f"{PYPY} {BENCH / 'counter.py'} {mapper} {corpus} {out / 'bare-loop-pypy'}",
        "awk hash": f"LC_ALL=C awk '{hashed}' {corpus} > {out / 'awk-hash'}",
        "awk | sort | uniq -c": (f"LC_ALL=C awk '{emit}' {corpus} | LC_ALL=C sort -S 1G"
                                 f" | uniq -c > {out / 'awk-sort-uniq'}"),
        "sort (intermediate only)": (f"LC_ALL=C awk '{emit}' {corpus} > {intermediate} && "
                                     f"echo START >&2 && LC_ALL=C sort -S 1G {intermediate} -o {intermediate}.sorted"),
        "dask.bag": f"{env_py} {BENCH / 'dask_job.py'} {mapper} {corpus} {out / 'dask'}",
        "mrjob +combiner": (f"{env_py} {BENCH / 'mrjob_job.py'} -r local --num-cores 2 --mapper-name {mapper} "
                            f"{corpus} > {out / 'mrjob-c'}"),
        "mrjob": (f"{env_py} {BENCH / 'mrjob_job.py'} -r local --num-cores 2 --no-combiner --mapper-name {mapper} "
                  f"{corpus} > {out / 'mrjob'}"),
        # the same MRJob script, unchanged, run by reductio on 2 local workers (README "Running mrjob jobs")
        "reductio mrjob +combiner": reductio_command('local', corpus, out / 'reductio-mrjob-c', mapper, True,
                                                     mrjob=True),
    }
    for name, command in table.items():
        if not any(word in name for word in skip) and (not only or any(word in name for word in only)):
            if "pypy" in name and PYPY is None:
                print(f"== {name} left out: no pypy3 on PATH (Debian: apt-get install pypy3)", flush=True)
                continue
            yield name, command


def reductio_command(kind: str, corpus: Path, output: Path, mapper: str, combine: bool, processes: int = None,
                     reducer: str = "reductio.reducers.sum", mrjob: bool = False) -> str:
    """The job as a user runs it, with a job log (``reductio: log:``) for per-step seconds and bytes.

    ``kind``: "local" (2 local workers), "pypy" (2 local workers running PyPy), "pypy-one" (1 of them), "ssh" (2 SSH
    workers) or "one"
    (1 local worker, which by default runs as many map and reduce processes as there are cores, or
    ``processes``). ``reducer``: the built-in sum, or
    the user's own (jobs.count), which reduce and the combiner can only call per key. ``mrjob``: the same job as
    the MRJob script mrjob_job.py (with its combiner), run by ``reductio mrjob``; its output is a folder of parts.
    """
    home = OUT / f"home-{kind}"
    log = output.with_suffix(".jsonl")
    config = output.with_suffix(".config.json")
    config.write_text(json.dumps({"reductio": dict({"log": str(log)},
                                                   **({"processes": processes} if processes else {}))}))
    flags = f"--corpus {corpus} --output {output} --mapper jobs.{mapper} --reducer {reducer}" + (
        " --combine" if combine else "")
    task = f"mrjob {BENCH / 'mrjob_job.py'} --mapper-name {mapper} {corpus} --output {output}" if mrjob else (
        f"job {flags}")
    return (f"rm -f {log} && cd {home / 'work'} && HOME={home} {VENV / 'bin' / 'reductio'} --config {config}"
            f" -f {BENCH / 'fabfile.py'} --force {task}")


def contender_env() -> dict:
    """Every contender's environment: the bench's modules importable, Python's stdout buffered as by default.

    PYTHONUNBUFFERED=1 (set in some shells and most container images) makes a Python task write each piece of
    output with its own system call: mrjob's tasks, two per pair, which cost mrjob's local runner and any
    unbuffered Python mapper alike. The contenders are measured as Python runs by default."""
    env = dict(os.environ, PYTHONPATH=str(BENCH))
    env.pop("PYTHONUNBUFFERED", None)
    return env


POLL = 0.25  # seconds between memory samples: often enough for processes that live seconds, cheap on 2 cores


def measure(name: str, command: str, timeout: float) -> dict:
    """Wall and CPU seconds, peak RSS of the largest process and of the head, and reductio's step times."""
    import psutil

    setup_for(name)
    os.sync()  # the previous contender's writes go to disk now, not during this one's timed run
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    env = contender_env()
    process = subprocess.Popen(["bash", "-c", command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                               text=True, start_new_session=True)
    peak, head_peak, ours_peak, status = 0, 0, 0, "ok"
    root = psutil.Process(process.pid)
    stderr_lines = []
    import threading

    def drain():
        for line in process.stderr:
            stderr_lines.append((time.time(), line))

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    stdout = []  # drained so that a contender never blocks on a full pipe; steps come from the job log
    out_reader = threading.Thread(target=lambda: stdout.extend(process.stdout), daemon=True)
    out_reader.start()
    while process.poll() is None:
        if time.time() - started > timeout:
            os.killpg(process.pid, 9)
            status = "timed out"
            break
        try:
            family = [root] + root.children(recursive=True) + (_ssh_workers() if "ssh" in name else [])
            for member in family:
                try:
                    rss = member.memory_info().rss
                except psutil.Error:
                    continue
                peak = max(peak, rss)
                argv = _command(member)
                if "reductio.worker" in argv or "bin/reductio" in argv:  # Python, not sort
                    ours_peak = max(ours_peak, rss)
                if "bin/reductio" in argv:
                    head_peak = max(head_peak, rss)
        except psutil.Error:
            pass
        time.sleep(POLL)
    process.wait()
    ended = time.time()
    reader.join(5)
    out_reader.join(5)
    wall = ended - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if status == "ok" and process.returncode != 0:
        message = [line.strip() for _, line in stderr_lines if line.strip()]
        status = f"failed (exit {process.returncode}): {message[-1][:300] if message else 'no message'}"
    start_marks = [t for t, line in stderr_lines if line.strip() == "START"]
    if start_marks:  # time the sort alone, not the awk that wrote its input
        wall = ended - start_marks[0]
    return {
        "name": name, "status": status, "wall": round(wall, 2),
        "cpu": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 2),
        "peak_rss_mb": round(peak / 2**20, 1), "head_rss_mb": round(head_peak / 2**20, 1) if head_peak else None,
        "reductio_rss_mb": round(ours_peak / 2**20, 1) if ours_peak else None,
        "steps": _steps(command),
    }


def _command(process) -> str:
    try:
        return " ".join(process.cmdline())
    except Exception:  # noqa: BLE001 - a process that just ended
        return ""


def _ssh_workers() -> list:
    """Worker processes started by sshd: not our children, but ours to measure."""
    import psutil

    found = []
    for process in psutil.process_iter(["cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        if "reductio.worker" in command and "home-ssh" in command:
            found.append(process)
    return found


def _steps(command: str) -> dict:
    """Per reductio step, from its job log: seconds, and bytes in, out and (scatter) crossed, over all workers."""
    found = re.search(r"--config (\S+)\.config\.json", command)
    log = Path(found.group(1) + ".jsonl") if found else None
    if log is None or not log.exists():
        return {}
    steps = {}
    for line in log.read_text().splitlines():
        record = json.loads(line)
        workers = (record.get("workers") or {}).values()
        entry = {"seconds": round(record.get("seconds") or 0, 2)}
        for counter in ("bytes in", "bytes out", "bytes crossed"):
            if any(counter in w for w in workers):
                entry[counter] = sum(w.get(counter, 0) for w in workers)
        if any("cpu seconds" in w for w in workers):  # the workers' own, sshd's children included
            entry["cpu seconds"] = round(sum(w.get("cpu seconds", 0) for w in workers), 2)
        if record["step"] == "scatter":
            entry["send seconds"] = max((w.get("seconds", 0) for w in workers), default=0)
        steps[record["step"]] = entry
    return steps


def setup_for(name: str) -> None:
    """Set up reductio's workers once per kind, outside the timed run."""
    if not name.startswith("reductio"):
        return
    kind = ("ssh" if "ssh" in name else "pypy-one" if "pypy 1 worker" in name else "pypy" if "pypy" in name else
            "one" if "1 worker" in name else "local")
    home = OUT / f"home-{kind}"
    work = home / "work"
    work.mkdir(parents=True, exist_ok=True)
    if kind == "ssh":
        start_sshd(home, work)
    else:
        python = f"python = {PYPY}\n" if kind.startswith("pypy") else ""
        (work / "workers.cfg").write_text("".join(
            f"[local-{i}]\nlocal = yes\nhome = {home / f'local-{i}'}\n{python}\n"
            for i in range(1 if kind in ("one", "pypy-one") else 2)))
    env = dict(contender_env(), HOME=str(home))
    subprocess.run([str(VENV / "bin" / "reductio"), "-f", str(BENCH / "fabfile.py"), "setup"], cwd=work, env=env,
                   check=True, capture_output=True)


_SSHD = []


def start_sshd(home: Path, work: Path) -> None:
    """Two sshd on loopback, as the test suite starts them (tests/sshd.py)."""
    if _SSHD:
        return
    sys.path.insert(0, str(REPO / "tests"))
    from sshd import SshCluster

    root = OUT / "sshd"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    cluster = SshCluster(root, 2)
    cluster.start()
    _SSHD.append(cluster)
    (home / ".ssh").mkdir(parents=True, exist_ok=True)
    (home / ".ssh" / "known_hosts").write_text(cluster.known_hosts())
    (work / "workers.cfg").write_text(cluster.workers_cfg(OUT / "home-ssh" / "homes", count=2))


def read_output(name: str, result: dict) -> dict:
    """A contender's output as {key: count}, whatever its format."""
    files = {"reductio local": "reductio-local", "reductio local +combiner": "reductio-local-c",
             "reductio local, own reducer": "reductio-local-own",
             "reductio local +combiner, own reducer": "reductio-local-c-own",
             "reductio ssh": "reductio-ssh", "reductio 1 worker": "reductio-one",
             "reductio 1 worker, 1 process": "reductio-one-p1", "reductio pypy": "reductio-pypy",
             "reductio pypy +combiner": "reductio-pypy-c", "reductio pypy 1 worker, 1 process": "reductio-pypy-one-p1",
             "bare loop": "bare-loop", "bare loop pypy": "bare-loop-pypy",
             "awk hash": "awk-hash",
             "awk | sort | uniq -c": "awk-sort-uniq", "dask.bag": "dask", "mrjob +combiner": "mrjob-c",
             "mrjob": "mrjob"}
    if name == "reductio mrjob +combiner":  # part files: the lines of the script's RawValueProtocol output
        lines = [line for part in sorted((OUT / "outputs" / "reductio-mrjob-c").glob("part-*"))
                 for line in part.read_text(encoding="utf-8").splitlines()]
    elif name in files:
        lines = (OUT / "outputs" / files[name]).read_text(encoding="utf-8").splitlines()
    else:
        return None
    counts = {}
    for line in lines:
        if name.startswith("awk | sort"):
            count, key = line.strip().split(" ", 1)
        else:
            key, count = line.rsplit("\t", 1)
        counts[key] = int(count)
    return counts


def write_results(results: list) -> None:
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                         capture_output=True, text=True).stdout.strip()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    lines = ["# Benchmark results", "",
             f"Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `python3 bench/run.py {invocation()}`"
             " (with the tables of earlier runs it did not replace);"
             f" {os.cpu_count()} cores ({cpu}), {memory:.0f} GiB, Python {platform.python_version()},"
             f" {subprocess.run(['sort', '--version'], capture_output=True, text=True).stdout.splitlines()[0]}.",
             "", "Ratios are to `reductio local` of the same table: same workload, size and run (below 1: faster"
             " than reductio).", ""]
    for (size, workload) in dict.fromkeys((r["size"], r["workload"]) for r in results):
        lines += [f"## {workload}, {size}", ""]
        for run in dict.fromkeys(r["run"] for r in results if (r["size"], r["workload"]) == (size, workload)):
            rows = [r for r in results if (r["size"], r["workload"], r["run"]) == (size, workload, run)]
            lines += _table(rows)
    lines += targets(results)
    from scatter_scale import section  # its own results, kept in bench/scale.json

    lines += [""] + section()
    (BENCH / "RESULTS.md").write_text("\n".join(lines) + "\n")


def _table(rows: list) -> list:
    """One run's rows of one workload at one size, and reductio's steps in them."""
    base = next((r["wall"] for r in rows if r["name"] == "reductio local" and r["status"] == "ok"), None)
    lines = [f"Measured {rows[0]['run']} at commit {rows[0]['commit']} by"
             f" `python3 bench/run.py {rows[0].get('command', '?')}`.", "",
             "| contender | status | identical | wall s | ratio | CPU s | peak RSS MB | reductio proc. RSS MB |"
             " head RSS MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['wall'] / base:.2f}" if base and r["status"] == "ok" else "-"
        identical = {True: "yes", False: "**NO**", None: "-"}[r["identical"]]
        wall = f"{r['wall']} (median of {', '.join(str(w) for w in r['walls'])})" if r.get("walls") else r["wall"]
        lines.append(f"| {_cell(r['name'])} | {r['status']} | {identical} | {wall} | {ratio} | {r['cpu']} |"
                     f" {r['peak_rss_mb']} | {r['reductio_rss_mb'] or '-'} | {r['head_rss_mb'] or '-'} |")
    floors = [(r, f) for r in rows for f in rows if f["name"] == bare_loop(r["name"]) and over_floor(r, f)]
    if floors:
        lines += ["", "The map step over the bare loop on the same interpreter (the framework's own cost):"
                  " the map step's workers' CPU seconds over the bare loop's CPU seconds:", "",
                  "| contender | map step CPU s | bare loop | its CPU s | ratio |", "|---|---|---|---|---|"]
        lines += [f"| {_cell(r['name'])} | {r['steps']['map']['cpu seconds']} | {f['name']} | {f['cpu']} |"
                  f" {over_floor(r, f):.2f}x |" for r, f in floors]
    lines += ["", "reductio's steps (from the job log; MB and workers' CPU seconds over all workers):", "",
              "| contender | step | seconds | workers' CPU s | MB in | MB out | MB crossed |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        for step, entry in r["steps"].items():
            mb = {k: f"{entry[k] / 1e6:.1f}" if k in entry else "-" for k in ("bytes in", "bytes out", "bytes crossed")}
            lines.append(f"| {_cell(r['name'])} | {step} | {entry['seconds']} | {entry.get('cpu seconds', '-')} |"
                         f" {mb['bytes in']} | {mb['bytes out']} | {mb['bytes crossed']} |")
    return lines + [""]


def bare_loop(name: str) -> str:
    """The bare loop on the interpreter that a reductio contender's workers run."""
    return "bare loop pypy" if "pypy" in name else "bare loop"


def over_floor(reductio: dict, floor: dict):
    """A map step's workers' CPU seconds over its bare loop's (the framework's own cost), or None."""
    step = reductio and reductio["steps"].get("map")
    if not step or not floor or not step.get("cpu seconds") or not floor["cpu"]:
        return None
    return step["cpu seconds"] / floor["cpu"]


HEAD_NOISE = 0.05  # "the head does not grow": within what one Python process varies by from run to run


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def targets(results: list) -> list:
    """The issue's targets, each assessed from the rows of one run (memory growth: the latest run of each size)."""
    lines = ["## Targets, assessed per run", "",
             "| size | run | target | measured | met? |", "|---|---|---|---|---|"]

    def add(size, run, target, measured, met):
        verdict = "-" if met is None else "yes" if met else "**no**"
        lines.append(f"| {size} | {run} | {_cell(target)} | {measured} | {verdict} |")

    for size, run in dict.fromkeys((r["size"], r["run"]) for r in results):
        ran = [r for r in results if (r["size"], r["run"]) == (size, run) and r["status"] == "ok"]

        def row(workload, name, ran=ran):
            return next((r for r in ran if (r["workload"], r["name"]) == (workload, name)), None)

        plain, combined = row("bigrams", "reductio local"), row("bigrams", "reductio local +combiner")
        for peer, target, limit in (("dask.bag", "bigrams +combiner faster than dask.bag", 1.0),
                                    ("mrjob +combiner", "bigrams +combiner >= 10x faster than mrjob +combiner", 10.0),
                                    ("awk hash", "bigrams +combiner within 1.5x of awk hash", 1 / 1.5)):
            other = row("bigrams", peer)
            if combined and other:
                speedup = other["wall"] / combined["wall"]
                add(size, run, target, f"{combined['wall']} s vs {other['wall']} s: reductio {speedup:.2f}x as fast",
                    speedup > limit if limit == 1.0 else speedup >= limit)
        pypy, dask = row("bigrams", "reductio pypy +combiner"), row("bigrams", "dask.bag")
        if pypy and dask:
            speedup = dask["wall"] / pypy["wall"]
            add(size, run, "bigrams +combiner on PyPy workers >= 1.5x faster than dask.bag",
                f"{pypy['wall']} s vs {dask['wall']} s: reductio on PyPy {speedup:.2f}x as fast (CPU s of the map"
                f" step {pypy['steps'].get('map', {}).get('cpu seconds', '-')}, of the whole job: head"
                f" {pypy['cpu']}; dask.bag {dask['cpu']})", speedup >= 1.5)
        for name, limit in (("reductio pypy +combiner", 1.2), ("reductio pypy", 1.2),
                            ("reductio pypy 1 worker, 1 process", 1.2), ("reductio local +combiner", None),
                            ("reductio local", None)):
            ours, floor = row("bigrams", name), row("bigrams", bare_loop(name))
            ratio = over_floor(ours, floor)
            if ratio:
                add(size, run, f"bigrams: {name}: map step <= {limit}x its bare loop" if limit else
                    f"bigrams: {name}: map step over its bare loop, no worse than before (README)",
                    f"{ours['steps']['map']['cpu seconds']} vs {floor['cpu']} CPU s ({ratio:.2f}x)",
                    None if limit is None else ratio <= limit)
        ours, theirs = row("bigrams", "reductio mrjob +combiner"), row("bigrams", "mrjob +combiner")
        if ours and theirs:
            speedup = theirs["wall"] / ours["wall"]
            add(size, run, "the MRJob script run by reductio >= 2x faster than by mrjob -r local",
                f"{ours['wall']} s ({ours['peak_rss_mb']} MB peak) vs {theirs['wall']} s ({theirs['peak_rss_mb']} MB"
                f" peak): reductio {speedup:.2f}x as fast", speedup >= 2)
        for peer, target, limit in (("awk | sort | uniq -c", "bigrams without combiner <= 2x awk | sort | uniq", 0.5),
                                    ("mrjob", "bigrams without combiner >= 3x faster than mrjob", 3.0)):
            other = row("bigrams", peer)
            if plain and other:
                speedup = other["wall"] / plain["wall"]
                add(size, run, target, f"{plain['wall']} s vs {other['wall']} s: reductio {speedup:.2f}x as fast",
                    speedup >= limit)
        local, bare = row("shuffle-heavy", "reductio local"), row("shuffle-heavy", "sort (intermediate only)")
        if local and bare and "sort" in local["steps"]:
            ratio = local["steps"]["sort"]["seconds"] / bare["wall"]
            add(size, run, "shuffle-heavy: sort step <= 1.3x bare sort",
                f"{local['steps']['sort']['seconds']} s vs {bare['wall']} s ({ratio:.2f}x)", ratio <= 1.3)
        for workload in ("bigrams", "shuffle-heavy"):
            ssh, local = row(workload, "reductio ssh"), row(workload, "reductio local")
            scatter = ssh and ssh["steps"].get("scatter")
            if scatter and scatter.get("send seconds"):
                rate = scatter["bytes crossed"] / 1e6 / scatter["send seconds"]
                add(size, run, f"{workload}: scatter over loopback SSH >= 200 MB/s",
                    f"{scatter['bytes crossed'] / 1e6:.0f} MB in {scatter['send seconds']} s of sending = {rate:.0f}"
                    f" MB/s ({scatter['bytes crossed'] / 1e6 / scatter['seconds']:.0f} MB/s over the whole step)",
                    rate >= 200)
            if ssh and local:
                extra = ssh["wall"] / local["wall"] - 1
                add(size, run, f"{workload}: SSH workers at most 15% over local", f"{extra:+.0%}", extra <= 0.15)
        ours = [r for r in ran if r["name"].startswith("reductio") and "pypy" not in r["name"]]
        if ours:
            worst = max(ours, key=lambda r: r["reductio_rss_mb"] or 0)
            add(size, run, "every reductio process <= 64 MB", f"largest {worst['reductio_rss_mb']} MB ({worst['name']},"
                f" {worst['workload']})", (worst["reductio_rss_mb"] or 0) <= 64)
        pypy = [r for r in ran if r["name"].startswith("reductio") and "pypy" in r["name"]]
        if pypy:  # PyPy's own process is larger (its bare loop's too): shown beside, not held to CPython's 64 MB
            worst = max(pypy, key=lambda r: r["reductio_rss_mb"] or 0)
            floor = row(worst["workload"], "bare loop pypy")
            add(size, run, "reductio processes on PyPy (not a target: 64 MB is for CPython workers)",
                f"largest {worst['reductio_rss_mb']} MB ({worst['name']}, {worst['workload']}); PyPy's bare loop"
                f" {floor['peak_rss_mb'] if floor else '-'} MB", None)
    latest = {}  # (size, workload, name) -> the latest run's row that finished
    for r in results:
        if r["status"] == "ok" and r["name"].startswith("reductio"):
            latest[(r["size"], r["workload"], r["name"])] = r
    sizes = list(dict.fromkeys(r["size"] for r in results))
    for small, large in ((a, b) for a in sizes for b in sizes if parse_size(b) == 5 * parse_size(a)):
        for (size, workload, name), r in latest.items():
            bigger = latest.get((large, workload, name))
            if size == small and bigger:
                growth = bigger["reductio_rss_mb"] / r["reductio_rss_mb"] - 1
                head = bigger["head_rss_mb"] / r["head_rss_mb"] - 1
                add(f"{small} -> {large}", f"{r['run']} -> {bigger['run']}",
                    f"{workload}, {name}: memory flat (<= 10% growth), head flat",
                    f"largest process {growth:+.0%}, head {head:+.0%}", growth <= 0.10 and head <= HEAD_NOISE)
    return lines + [""]


if __name__ == "__main__":
    try:
        main()
    finally:
        for started in _SSHD:
            started.stop()
