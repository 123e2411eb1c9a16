"""Where the combining map step's time goes: one stage per run, to be counted by callgrind or cachegrind.

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        bench/.venv/bin/python bench/profile_map.py STAGE [MAPPER]
    valgrind --tool=cachegrind --cache-sim=yes --branch-sim=yes --cachegrind-out-file=/dev/null \\
        bench/.venv/bin/python bench/profile_map.py STAGE [MAPPER]
    bench/.venv/bin/python bench/profile_map.py --against dask --times 5 --bytes 50000000 combiner
    PYTHONPATH=.:bench pypy3 bench/profile_map.py --against bare --corpus bench/out/corpus-50M.txt combiner

Reads the first 1 MB (or --bytes) of bench/out/corpus-200M.txt (or
--corpus; make it with `python3 bench/run.py --sizes 200M`) as map reads
a shard. Any interpreter runs it (PyPy: the worker side is standard library).
Instruction counts repeat from run to run whatever else the machine does,
unlike seconds. Subtract the `imports` stage to get a stage's own cost.
Seconds on this machine vary by a quarter from try to try, so --against
runs two stages at once, one per core, --times times, and prints each
one's CPU seconds per try and their ratio: both feel the same machine.
See bench/README.md "Profile" for what was found.
"""

import argparse
import collections
import itertools
import operator
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import jobs

from reductio.worker import datasteps as worker
from reductio.worker.output import PartitionedOutput
from reductio.worker.steps import map_into, sum_into

SLICE = Path(__file__).resolve().parent / "out" / "corpus-200M.txt"
SLICE_BYTES = 10**6


def records(size: int, corpus: Path = SLICE):
    return worker._records([(corpus, 0, size)], worker._Position(), True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage")
    parser.add_argument("mapper", nargs="?", default="line_bigrams")
    parser.add_argument("--bytes", type=int, default=SLICE_BYTES, help="how much of the corpus to read")
    parser.add_argument("--against", help="time STAGE against this stage, the two at once")
    parser.add_argument("--times", type=int, default=5, help="tries of --against")
    parser.add_argument("--corpus", type=Path, default=SLICE, help="the corpus to read from")
    args = parser.parse_args()
    if args.against:
        paired(args.stage, args.against, args.mapper, args.bytes, args.times, args.corpus)
    else:
        run(args.stage, getattr(jobs, args.mapper), args.bytes, args.corpus)


def paired(stage: str, other: str, mapper: str, size: int, times: int, corpus: Path) -> None:
    """Both stages at once, ``times`` times, each starting first in turn; CPU seconds of each, and their ratios."""
    ratios = []
    for attempt in range(times):
        order = (stage, other) if attempt % 2 == 0 else (other, stage)
        running = {name: subprocess.Popen([sys.executable, __file__, name, mapper, "--bytes", str(size),
                                           "--corpus", str(corpus)])
                   for name in order}
        cpu = {}
        for name, process in running.items():
            _, status, usage = os.wait4(process.pid, 0)
            if status:
                raise SystemExit(f"stage {name} failed (wait status {status})")
            cpu[name] = usage.ru_utime + usage.ru_stime
        ratios.append(cpu[stage] / cpu[other])
        print(f"try {attempt + 1}: {stage} {cpu[stage]:.2f} s, {other} {cpu[other]:.2f} s of CPU,"
              f" ratio {ratios[-1]:.3f}")
    print(f"{stage} / {other}: median ratio {statistics.median(ratios):.3f} over {times} tries of {size:,} bytes")


def run(stage: str, mapper, size: int, corpus: Path) -> None:
    count = collections._count_elements  # Counter's C loop
    drain = collections.deque(maxlen=0).extend
    first = operator.itemgetter(0)
    if stage == "imports":  # starting Python and importing: subtract from every other stage
        return
    if stage == "read":  # records as map reads them
        drain(records(size, corpus))
    elif stage == "floor":  # + the user's mapper, its pairs drained in C
        for key, value in records(size, corpus):
            drain(mapper(key, value))
    elif stage == "bare":  # the bench's bare loop (counter.py): each key counted by a Python loop, values ignored
        counts = collections.Counter()
        for key, value in records(size, corpus):
            for out_key, _ in mapper(key, value):
                counts[out_key] += 1
    elif stage == "pairs":  # + each (key, value) pair counted
        held = {}
        for key, value in records(size, corpus):
            count(held, mapper(key, value))
    elif stage == "combiner":  # reductio's sum combiner: the above, checks, flush, output
        with tempfile.TemporaryDirectory() as folder:
            output = PartitionedOutput(Path(folder), 2, "profile")
            sum_into(mapper, "mapper", records(size, corpus), 100_000, output)
            output.close()
    elif stage == "map":  # map without a combiner: every pair a line in its partition's file
        with tempfile.TemporaryDirectory() as folder:
            output = PartitionedOutput(Path(folder), 2, "profile")
            map_into(mapper, "mapper", records(size, corpus), output)
            output.close()
    elif stage == "dask":  # dask.bag's task (bench/dask_job.py): a list of keys per line, chained, toolz.frequencies
        import toolz  # dask's own counting: a Python loop, d[item] += 1

        toolz.frequencies(itertools.chain.from_iterable([k for k, _ in mapper(line, "")]
                                                        for line, _ in records(size, corpus)))
    elif stage == "dask-in-c":  # the same keys counted by Counter's C loop instead (how runs 1 to 9 modelled dask)
        held = {}
        for key, value in records(size, corpus):
            count(held, [k for k, _ in mapper(key, value)])
    elif stage == "keys":  # keys alone counted in C, values ignored: not a design, a bound
        held = {}
        for key, value in records(size, corpus):
            count(held, map(first, mapper(key, value)))
    else:
        raise SystemExit(f"unknown stage {stage!r}: imports, read, floor, bare, pairs, combiner, map, dask, dask-in-c"
                         " or keys")


if __name__ == "__main__":
    main()
