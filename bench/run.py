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

# Each workload's keys in awk: EMIT(key) becomes a print (for sort | uniq -c) or a hash count.
AWK_BIGRAMS = (r'{ $0 = tolower($0); for (i = 1; i <= NF; i++) { w = $i; n = length(w);'
               r' for (j = 1; j < n; j++) { a = substr(w, j, 1); b = substr(w, j + 1, 1);'
               r' if (a ~ /[[:alpha:]]/ && b ~ /[[:alpha:]]/) EMIT } } }')
AWK_PAIRS = r'{ for (i = 1; i < NF; i++) EMIT }'
AWK_KEY = {AWK_BIGRAMS: "a b", AWK_PAIRS: '$i " " $(i + 1)'}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20M", help="corpus sizes, comma-separated (e.g. 20M,100M,200M,1G)")
    parser.add_argument("--skip", default="", help="contenders to leave out, comma-separated (e.g. mrjob,dask)")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds before a contender is stopped")
    parser.add_argument("--mrjob-max", default="1G", help="largest size mrjob runs at (it is very slow)")
    args = parser.parse_args()
    if Path(sys.prefix).resolve() != VENV.resolve():  # measure from inside the benchmark's own venv
        prepare_venv()
        os.execv(str(PY), [str(PY), __file__, *sys.argv[1:]])
    skip = set(filter(None, args.skip.split(",")))
    results = []
    for size_text in args.sizes.split(","):
        size = parse_size(size_text)
        corpus = make_corpus(size_text, size)
        skipped = skip | ({"mrjob"} if size > parse_size(args.mrjob_max) else set())
        for workload, mapper, awk in (("bigrams", "line_bigrams", AWK_BIGRAMS), ("shuffle-heavy", "word_pairs", AWK_PAIRS)):
            reference = reference_counts(corpus, mapper)
            for name, command in contenders(workload, mapper, awk, corpus, skipped):
                print(f"== {size_text} {workload} {name}", flush=True)
                result = measure(name, command, args.timeout)
                result.update(size=size_text, workload=workload)
                output = read_output(name, result) if result["status"] == "ok" else None
                result["identical"] = None if output is None else output == reference
                results.append(result)
                print(json.dumps({k: v for k, v in result.items() if k != "output"}), flush=True)
    (OUT / "results.json").write_text(json.dumps(results, indent=1))
    write_results(results)


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


def contenders(workload: str, mapper: str, awk: str, corpus: Path, skip: set):
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
        "reductio ssh": f"{reductio_command('ssh', corpus, out / 'reductio-ssh', mapper, False)}",
        "counter": f"{env_py} {BENCH / 'counter.py'} {mapper} {corpus} {out / 'counter'}",
        "awk hash": f"LC_ALL=C awk '{hashed}' {corpus} > {out / 'awk-hash'}",
        "awk | sort | uniq -c": f"LC_ALL=C awk '{emit}' {corpus} | LC_ALL=C sort -S 1G | uniq -c > {out / 'awk-sort-uniq'}",
        "sort (intermediate only)": (f"LC_ALL=C awk '{emit}' {corpus} > {intermediate} && "
                                     f"echo START >&2 && LC_ALL=C sort -S 1G {intermediate} -o {intermediate}.sorted"),
        "dask.bag": f"{env_py} {BENCH / 'dask_job.py'} {mapper} {corpus} {out / 'dask'}",
        "mrjob +combiner": (f"{env_py} {BENCH / 'mrjob_job.py'} -r local --num-cores 2 --mapper-name {mapper} "
                            f"{corpus} > {out / 'mrjob-c'}"),
        "mrjob": (f"{env_py} {BENCH / 'mrjob_job.py'} -r local --num-cores 2 --no-combiner --mapper-name {mapper} "
                  f"{corpus} > {out / 'mrjob'}"),
    }
    if workload == "shuffle-heavy":
        for name in ("reductio local +combiner", "mrjob +combiner", "mrjob", "dask.bag"):
            table.pop(name)
    for name, command in table.items():
        if not any(word and word in name for word in skip):
            yield name, command


def reductio_command(kind: str, corpus: Path, output: Path, mapper: str, combine: bool) -> str:
    home = OUT / f"home-{kind}"
    flags = f"--corpus {corpus} --output {output} --mapper jobs.{mapper}" + (" --combine" if combine else "")
    return (f"cd {home / 'work'} && HOME={home} {VENV / 'bin' / 'reductio'} -f {BENCH / 'fabfile.py'} "
            f"--force job {flags}")


def measure(name: str, command: str, timeout: float) -> dict:
    """Wall and CPU seconds, peak RSS of the largest process and of the head, and reductio's step times."""
    import psutil

    setup_for(name)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    env = dict(os.environ, PYTHONPATH=str(BENCH))
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
    stdout = []
    out_reader = threading.Thread(target=lambda: stdout.extend(process.stdout), daemon=True)
    out_reader.start()
    while process.poll() is None:
        if time.time() - started > timeout:
            os.killpg(process.pid, 9)
            status = "timed out"
            break
        try:
            family = [root] + root.children(recursive=True) + _ssh_workers()
            for member in family:
                try:
                    rss = member.memory_info().rss
                except psutil.Error:
                    continue
                peak = max(peak, rss)
                command = _command(member)
                if "reductio.worker" in command or "bin/reductio" in command:  # Python, not sort
                    ours_peak = max(ours_peak, rss)
                if "bin/reductio" in command:
                    head_peak = max(head_peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.05)
    process.wait()
    ended = time.time()
    reader.join(5)
    out_reader.join(5)
    wall = ended - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if status == "ok" and process.returncode != 0:
        message = [line.strip() for _, line in stderr_lines if line.strip()]
        status = f"failed (exit {process.returncode}): {' / '.join(message[:3])[:300]}"
    start_marks = [t for t, line in stderr_lines if line.strip() == "START"]
    if start_marks:  # time the sort alone, not the awk that wrote its input
        wall = ended - start_marks[0]
    return {
        "name": name, "status": status, "wall": round(wall, 2),
        "cpu": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 2),
        "peak_rss_mb": round(peak / 2**20, 1), "head_rss_mb": round(head_peak / 2**20, 1) if head_peak else None,
        "reductio_rss_mb": round(ours_peak / 2**20, 1) if ours_peak else None,
        "steps": _steps("".join(stdout)),
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


def _steps(stdout: str) -> dict:
    steps = {}
    for match in re.finditer(r"^reductio: (\w+): .*\((\d+\.\d+) s\)$", stdout, re.M):
        steps[match.group(1)] = float(match.group(2))
    return steps


def setup_for(name: str) -> None:
    """Set up reductio's workers once per kind, outside the timed run."""
    if not name.startswith("reductio"):
        return
    kind = "ssh" if "ssh" in name else "local"
    home = OUT / f"home-{kind}"
    work = home / "work"
    work.mkdir(parents=True, exist_ok=True)
    if kind == "ssh":
        start_sshd(home, work)
    else:
        (work / "workers.cfg").write_text("".join(
            f"[local-{i}]\nlocal = yes\nhome = {home / f'local-{i}'}\n\n" for i in range(2)))
    env = dict(os.environ, HOME=str(home), PYTHONPATH=str(BENCH))
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
             "reductio ssh": "reductio-ssh", "counter": "counter", "awk hash": "awk-hash",
             "awk | sort | uniq -c": "awk-sort-uniq", "dask.bag": "dask", "mrjob +combiner": "mrjob-c",
             "mrjob": "mrjob"}
    if name not in files:
        return None
    counts = {}
    for line in (OUT / "outputs" / files[name]).read_text(encoding="utf-8").splitlines():
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
             f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with `python3 bench/run.py`;"
             f" {os.cpu_count()} cores ({cpu}), {memory:.0f} GiB, Python {platform.python_version()},"
             f" {subprocess.run(['sort', '--version'], capture_output=True, text=True).stdout.splitlines()[0]}.",
             "", "Ratios are to `reductio local` of the same workload and size (below 1: faster than reductio).", ""]
    for (size, workload) in dict.fromkeys((r["size"], r["workload"]) for r in results):
        rows = [r for r in results if r["size"] == size and r["workload"] == workload]
        base = next((r["wall"] for r in rows if r["name"] == "reductio local" and r["status"] == "ok"), None)
        lines += [f"## {workload}, {size}", "",
                  "| contender | status | identical | wall s | ratio | CPU s | peak RSS MB | reductio proc. RSS MB |"
                  " head RSS MB | steps (s) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            ratio = f"{r['wall'] / base:.2f}" if base and r["status"] == "ok" else "-"
            steps = ", ".join(f"{k} {v}" for k, v in r["steps"].items())
            identical = {True: "yes", False: "**NO**", None: "-"}[r["identical"]]
            lines.append(f"| {r['name']} | {r['status']} | {identical} | {r['wall']} | {ratio} | {r['cpu']} |"
                         f" {r['peak_rss_mb']} | {r['reductio_rss_mb'] or '-'} | {r['head_rss_mb'] or '-'} | {steps} |")
        lines.append("")
    (BENCH / "RESULTS.md").write_text("\n".join(lines) + "\n")
    for cluster in _SSHD:
        cluster.stop()


if __name__ == "__main__":
    try:
        main()
    finally:
        for started in _SSHD:
            started.stop()
