"""dask.bag with the processes scheduler and 2 workers, same mapper.

frequencies(split_every=2): each merge holds two partial counts, not eight,
so word pairs at 1 GB fit in memory (the default was OOM-killed there).
"""

import sys

import dask.bag as db

import jobs


def keys(line):
    return [key for key, _ in getattr(jobs, sys.argv[1])(line.rstrip("\n"))]


if __name__ == "__main__":
    bag = db.read_text(sys.argv[2], blocksize="16MiB").map(keys).flatten().frequencies(split_every=2)
    result = bag.compute(scheduler="processes", num_workers=2)
    with open(sys.argv[3], "w", encoding="utf-8") as out:
        for key, value in result:
            out.write(f"{key}\t{value}\n")
