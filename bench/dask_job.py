"""dask.bag with the processes scheduler and 2 workers, same mapper."""

import sys

import dask.bag as db

import jobs


def keys(line):
    return [key for key, _ in getattr(jobs, sys.argv[1])(line.rstrip("\n"))]


if __name__ == "__main__":
    bag = db.read_text(sys.argv[2], blocksize="16MiB").map(keys).flatten().frequencies()
    result = bag.compute(scheduler="processes", num_workers=2)
    with open(sys.argv[3], "w", encoding="utf-8") as out:
        for key, value in result:
            out.write(f"{key}\t{value}\n")
