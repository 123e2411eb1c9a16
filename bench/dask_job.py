"""dask.bag with the processes scheduler and 2 workers, same mapper.

frequencies(split_every=2): each merge holds two partial counts, not eight.
The counts are written by the worker that made them (to_textfiles), not
gathered into this process: on word pairs at 1 GB, gathering them as well
was OOM-killed on a 24 GiB machine.
"""

import shutil
import sys
import tempfile
from pathlib import Path

import dask
import dask.bag as db
import jobs


def keys(line):
    return [key for key, _ in getattr(jobs, sys.argv[1])(line.rstrip("\n"))]


def count_line(pair):
    return f"{pair[0]}\t{pair[1]}"


if __name__ == "__main__":
    output = Path(sys.argv[3])
    bag = db.read_text(sys.argv[2], blocksize="16MiB").map(keys).flatten().frequencies(split_every=2)
    with tempfile.TemporaryDirectory(dir=output.parent) as folder, \
            dask.config.set(scheduler="processes", num_workers=2):
        parts = bag.map(count_line).to_textfiles(f"{folder}/*.tsv", last_endline=True)
        with open(output, "wb") as out:
            for part in sorted(parts):
                with open(part, "rb") as counts:
                    shutil.copyfileobj(counts, out, 1 << 20)
