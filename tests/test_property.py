"""Property: any records through map -> scatter -> sort -> reduce equal a single-process reference."""

from __future__ import annotations

import itertools
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import gather_pipeline, make_context
from reductio import tasks
from reductio.wire.sorting import sort_key

_TEXT = dict(blacklist_categories=("Cs",))
keys = st.text(st.characters(blacklist_characters="\t\n\r", **_TEXT), max_size=5)
values = st.text(st.characters(blacklist_characters="\n\r", **_TEXT), max_size=6)
_runs = itertools.count()


def reference(records) -> bytes:
    """What wordjobs.gather makes of ``records``: per key, the count and the sorted values."""
    groups = {}
    for key, value in records:
        groups.setdefault(key, []).append(value)
    lines = ["\t".join([key, str(len(vs))] + sorted(vs)) + "\n" for key, vs in groups.items()]
    return "".join(sorted(lines, key=lambda line: sort_key(line[:-1]))).encode("utf-8")  # merge's order: key first


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(st.tuples(keys, values), max_size=40))
def test_the_pipeline_equals_a_single_process_reference_on_one_two_and_three_workers(records, tmp_path):
    run = next(_runs)
    source = tmp_path / f"records-{run}.txt"
    source.write_bytes("".join(f"{k}\t{v}\n" for k, v in records).encode("utf-8"))
    expected = reference(records)
    for count in (1, 2, 3):
        c = make_context(count, workers=[
            {"name": f"w{i}", "local": "yes", "home": str(tmp_path / f"cluster-{count}" / f"w{i}")}
            for i in range(count)])
        tasks.setup(c)
        output = gather_pipeline(c, source, run, tmp_path / f"out-{run}-{count}.tsv")
        assert Path(output).read_bytes() == expected, f"{count} worker(s)"
