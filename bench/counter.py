"""The single-process baseline: collections.Counter over the same mapper."""

import sys
from collections import Counter

import jobs

mapper = getattr(jobs, sys.argv[1])
counts = Counter()
with open(sys.argv[2], encoding="utf-8") as lines:
    for line in lines:
        for key, _ in mapper(line.rstrip("\n")):
            counts[key] += 1
with open(sys.argv[3], "w", encoding="utf-8") as out:
    for key, value in counts.items():
        out.write(f"{key}\t{value}\n")
