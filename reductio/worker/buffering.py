"""A process's stdout written in large blocks, whatever PYTHONUNBUFFERED says.

Under ``PYTHONUNBUFFERED=1`` (set in many shells and container images)
every ``print`` or ``write`` is a system call of its own, and into a pipe
each one wakes the reader: a mapper's stray ``print`` per record then costs
the head that reads the worker's stdout, and mrjob's two writes per pair
cost the ``sort`` reading a task's output. Steps whose stdout nobody reads
line by line run inside ``buffered_stdout``. Standard library only.
"""

from __future__ import annotations

import contextlib
import io
import sys

BLOCK = 1 << 16


@contextlib.contextmanager
def buffered_stdout():
    """``sys.stdout`` (and its ``buffer``) in BLOCK-sized writes until the block ends, then flushed and restored."""
    sys.stdout.flush()
    stdout = sys.stdout
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(stdout.fileno(), "w", closefd=False), BLOCK),
                                  encoding=stdout.encoding, errors=stdout.errors, newline="\n")
    try:
        yield
    finally:
        try:
            sys.stdout.flush()
        finally:
            sys.stdout = stdout
