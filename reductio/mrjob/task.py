"""One substep of an mrjob script on a worker: ``python3 -m reductio.mrjob_task JOB.py --step-num=N --mapper ...``.

mrjob encodes keys with ujson, rapidjson or simplejson when it can import
them, else with the standard library's json, and they write the same key
as different bytes. Keys are partitioned by their bytes, so every worker
must encode alike: this hides the other libraries from the script, which
then runs unchanged as its own ``__main__``, importing the ``mrjob.zip``
of the head's mrjob shipped into its working folder (mrjobs.py) when
there is one. A mapper whose step has a combiner of the script's own may
run that combiner in its own process (``_run_mapper_combining``). mrjob
0.7.4 imports two modules newer Pythons removed; ``supply_removed_modules``
(mrjob_modules.py) stands in for them. Standard library only.
"""

import os
import runpy
import sys

from reductio.mrjob.modules import supply_removed_modules
from reductio.worker.buffering import buffered_stdout

_OTHER_JSON = ("ujson", "rapidjson", "simplejson")
COMBINE_IN_MAPPER = "REDUCTIO_MRJOB_COMBINE_IN_MAPPER"  # mrjobs.py sets it on a map step whose combiner runs here
_BATCH = 100_000  # mapper values held before the combiner runs on them: bounded memory, as a map-side spill
_HELD = 64 << 20  # characters of keys and str values held: fewer values when they are long
_EXACT = (str, int, float, bool, type(None))  # what a JSON round trip gives back as it was


def main() -> None:
    for name in _OTHER_JSON:
        sys.modules[name] = None  # importing it raises ImportError: mrjob falls back to json
    supply_removed_modules()
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    if os.path.isfile("mrjob.zip"):
        sys.path.insert(0, os.path.abspath("mrjob.zip"))
    if os.environ.get(COMBINE_IN_MAPPER) and "--mapper" in sys.argv:
        from mrjob.job import MRJob

        MRJob.run_mapper = _run_mapper_combining
    with buffered_stdout():  # mrjob writes each key and value apart
        runpy.run_path(script, run_name="__main__")


def _run_mapper_combining(job, step_num: int = 0) -> None:
    """mrjob's ``run_mapper`` with the step's combiner run here on batches of the mapper's pairs, before they
    are encoded, as Hadoop combines map-side spills: no sort and no combiner process after it.

    The combiner must see a pair as the internal protocol gives it back, so
    only pairs that survive JSON unchanged (a str key; a str, number, bool or
    None value) are combined; others are written as the mapper writes them.
    A combiner may run any number of times, none included, so that is what
    mrjob's own runners would allow.
    """
    read_lines, write_mapped = job._wrap_protocols(step_num, "mapper")
    _, write_combined = job._wrap_protocols(step_num, "combiner")
    both_json = (_is_json(job.pick_protocols(step_num, "mapper")[1])
                 and _is_json(job.pick_protocols(step_num, "combiner")[0]))
    held: dict = {}
    count = size = 0
    for key, value in job.map_pairs(read_lines(), step_num=step_num):
        if not both_json or type(key) is not str or type(value) not in _EXACT:
            write_mapped(key, value)
            continue
        values = held.get(key)
        if values is None:
            held[key] = [value]
            size += len(key)
        else:
            values.append(value)
        count += 1
        if type(value) is str:
            size += len(value)
        if count >= _BATCH or size >= _HELD:
            _combine(job, step_num, held, write_combined)
            held, count, size = {}, 0, 0
    _combine(job, step_num, held, write_combined)


def _combine(job, step_num: int, held: dict, write) -> None:
    if held:
        pairs = ((key, value) for key, values in held.items() for value in values)
        for key, value in job.combine_pairs(pairs, step_num=step_num):
            write(key, value)


def _is_json(method) -> bool:
    """Whether a protocol's read or write is mrjob's JSON protocol (the standard library's json here)."""
    from mrjob.protocol import StandardJSONProtocol

    return isinstance(getattr(method, "__self__", None), StandardJSONProtocol)


if __name__ == "__main__":
    main()
