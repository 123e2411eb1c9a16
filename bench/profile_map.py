"""Where the combining map step's instructions go: one stage per run, to be counted by callgrind.

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        bench/.venv/bin/python bench/profile_map.py STAGE [MAPPER]

Reads the first 1 MB of bench/out/corpus-200M.txt (make it with
`python3 bench/run.py --sizes 200M`) as map reads a shard. Instruction
counts repeat from run to run whatever else the machine does, unlike
seconds. Subtract the `imports` stage to get a stage's own cost; see
bench/README.md "Profile" for what was found.
"""

import collections
import itertools
import operator
import sys
import tempfile
from pathlib import Path

import jobs
from reductio import worker
from reductio.output import PartitionedOutput
from reductio.steps import sum_into

SLICE = Path(__file__).resolve().parent / "out" / "corpus-200M.txt"
SLICE_BYTES = 10**6


def records():
    return worker._records([(SLICE, 0, SLICE_BYTES)], worker._Position(), True)


def main() -> None:
    stage, mapper = sys.argv[1], getattr(jobs, sys.argv[2] if len(sys.argv) > 2 else "line_bigrams")
    count = collections._count_elements  # Counter's C loop
    drain = collections.deque(maxlen=0).extend
    first = operator.itemgetter(0)
    if stage == "imports":  # starting Python and importing: subtract from every other stage
        return
    if stage == "read":  # records as map reads them
        drain(records())
    elif stage == "floor":  # + the user's mapper, its pairs drained in C
        for key, value in records():
            drain(mapper(key, value))
    elif stage == "pairs":  # + each (key, value) pair counted
        held = {}
        for key, value in records():
            count(held, mapper(key, value))
    elif stage == "combiner":  # reductio's sum combiner: the above, checks, flush, output
        with tempfile.TemporaryDirectory() as folder:
            output = PartitionedOutput(Path(folder), 2, "profile")
            sum_into(mapper, "mapper", records(), 100_000, output)
            output.close()
    elif stage == "dask":  # dask.bag's task (bench/dask_job.py): a list of keys per line, chained, toolz.frequencies
        import toolz  # dask's own counting: a Python loop, d[item] += 1

        toolz.frequencies(itertools.chain.from_iterable([k for k, _ in mapper(line, "")] for line, _ in records()))
    elif stage == "dask-in-c":  # the same keys counted by Counter's C loop instead (how runs 1 to 9 modelled dask)
        held = {}
        for key, value in records():
            count(held, [k for k, _ in mapper(key, value)])
    elif stage == "keys":  # keys alone counted in C, values ignored: not a design, a bound
        held = {}
        for key, value in records():
            count(held, map(first, mapper(key, value)))
    else:
        raise SystemExit(f"unknown stage {stage!r}: imports, read, floor, pairs, combiner, dask, dask-in-c or keys")


if __name__ == "__main__":
    main()
