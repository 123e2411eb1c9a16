"""All lines of a key sit together whatever bytes the key holds: sort orders by key, then by the whole line.

Whole lines alone would not do: TAB is byte 9, so ``a<TAB>1`` sorted after
``a\\x01<TAB>z`` and the reducer was called twice for ``a``. Keys here are
drawn from a few characters around TAB so that keys which are prefixes of
each other, followed by a byte below TAB, come up often.
"""

from __future__ import annotations

import itertools
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import gather_pipeline, make_context
from reductio import tasks
from reductio.errors import InputError
from reductio.wire.sorting import sort_argv, sort_env, sort_key
from reductio.worker.shares import cut
from reductio.worker.steps import check_sorted

_NEAR_TAB = "\x00\x01\x08\x0b\x0c\r a\x7f\u00e9\U0001F600"  # bytes below and just above TAB, multi-byte ones
keys = st.text(st.sampled_from(_NEAR_TAB), max_size=3)
values = st.text(st.sampled_from(_NEAR_TAB + "\t"), max_size=3)
loaded_values = values.filter(lambda value: not value.endswith("\r"))  # load reads CRLF as LF
lines = st.lists(st.one_of(st.tuples(keys, values).map("\t".join), keys), max_size=30)  # some with no tab
_runs = itertools.count()


def sorted_by_sort(folder: Path, inputs: list, **options) -> list:
    """The lines the worker's sort (sort_argv, sort_env) writes for ``inputs``, each a list of lines."""
    files = []
    for index, part in enumerate(inputs):
        files.append(folder / f"in-{index}")
        files[-1].write_bytes("".join(line + "\n" for line in part).encode("utf-8"))
    done = subprocess.run(sort_argv(files, folder, **options), env=sort_env(), stdout=subprocess.PIPE, timeout=60,
                          check=True)
    return done.stdout.decode("utf-8").split("\n")[:-1]


def keys_in_runs(ordered: list) -> list:
    """Each key once per run of lines holding it, in order."""
    return [key for key, _ in itertools.groupby(line.partition("\t")[0] for line in ordered)]


@settings(max_examples=150, deadline=None)
@given(lines=lines)
def test_sort_and_sort_m_keep_each_key_s_lines_together_in_the_order_reduce_checks(lines):
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        ordered = sorted_by_sort(folder, [lines])
        assert ordered == sorted(lines, key=sort_key)
        assert len(keys_in_runs(ordered)) == len({line.partition("\t")[0] for line in lines})
        assert list(check_sorted(ordered, "sorted")) == ordered
        half = len(lines) // 2
        parts = [sorted(lines[:half], key=sort_key), sorted(lines[half:], key=sort_key)]
        assert sorted_by_sort(folder, parts, merge_only=True) == ordered
        assert sorted_by_sort(folder, [lines], unique=True) == sorted(set(lines), key=sort_key)


def test_the_lines_of_the_issue_sort_key_a_first_and_whole_lines_out_of_that_order_are_refused():
    with tempfile.TemporaryDirectory() as scratch:
        ordered = sorted_by_sort(Path(scratch), [["a", "a\x01\tz", "a\t1"]])
    assert ordered == ["a", "a\t1", "a\x01\tz"]
    with pytest.raises(InputError, match=r"here line 3: input is not sorted \('a\\t1' after 'a\\x01\\tz'\)"):
        list(check_sorted(["a", "a\x01\tz", "a\t1"], "here"))


def test_shares_of_sorted_input_cut_between_keys_in_that_order(tmp_path):
    """Each key's lines, in sort's order, stay in one share: a cut falls where the key changes."""
    lines = sorted([f"k{i:06d}\x01\tv" for i in range(150_000)] + [f"k{i:06d}\t{j}" for i in range(150_000)
                                                                   for j in range(2)], key=sort_key)
    path = tmp_path / "sorted"
    path.write_text("".join(line + "\n" for line in lines))
    shares = cut([path], 4, by_key=True)
    assert len(shares) == 4
    seen = []
    for share in shares:
        (file, start, end), = share
        with open(file, "rb") as data:
            data.seek(start)
            seen.append(set(keys_in_runs(data.read(end - start).decode().split("\n")[:-1])))
    assert all(not (a & b) for a, b in itertools.combinations(seen, 2))


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(st.tuples(keys, loaded_values), min_size=1, max_size=40))
@example(records=[("a", "1"), ("a\x01", "z"), ("a", "2"), ("", "\x01"), ("\x00", "")])
def test_the_reducer_gets_each_key_s_values_in_one_call_through_the_real_steps(records, tmp_path):
    """map -> scatter -> sort -> reduce on two workers of three processes: one output line per key, all values."""
    run = next(_runs)
    source = tmp_path / f"records-{run}.txt"
    source.write_bytes("".join(f"{k}\t{v}\n" for k, v in records).encode("utf-8"))
    groups = {}
    for key, value in records:
        groups.setdefault(key, []).append(value)
    c = make_context(2, processes=3)
    tasks.setup(c)
    output = gather_pipeline(c, source, run, tmp_path / f"out-{run}.tsv")
    got = {}
    for line in output.read_bytes().decode("utf-8").split("\n")[:-1]:
        key, count, *vals = line.split("\t")
        assert key not in got, f"the reducer was called twice for {key!r}"
        got[key] = (int(count), "\t".join(vals))
    assert got == {key: (len(vs), "\t".join(sorted(vs))) for key, vs in groups.items()}


def test_a_text_dataset_whose_keys_hold_bytes_below_tab_reduces_each_key_once(tmp_path):
    """The issue's lines: the bare line ``a`` (key ``a``), ``a\\x01<TAB>z`` and ``a<TAB>1``."""
    source = tmp_path / "in.txt"
    source.write_bytes(b"a\na\x01\tz\na\t1\n")
    c = make_context(1)
    tasks.setup(c)
    tasks.load(c, str(source), "text")
    tasks.sort(c, "text", "sorted")
    tasks.reduce(c, "wordjobs.gather", "sorted", "out")
    tasks.merge(c, "out", str(tmp_path / "out.tsv"))
    assert (tmp_path / "out.tsv").read_bytes() == b"a\t2\t\t1\na\x01\t1\tz\n"
    source.write_bytes(b"a\t1\na\x01\t2\na\t3\n")  # the same through reductio.reducers.sum's own loop
    tasks.load(c, str(source), "text")
    tasks.sort(c, "text", "sorted")
    tasks.reduce(c, "reductio.reducers.sum", "sorted", "sums")
    tasks.merge(c, "sums", str(tmp_path / "sums.tsv"))
    assert (tmp_path / "sums.tsv").read_bytes() == b"a\t4\na\x01\t2\n"
