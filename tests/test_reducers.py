"""reductio.reducers.sum: its own loops in reduce and the combiner give what the plain reducer gives."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from invoke import Exit

from conftest import files_per_dataset, make_context, write_lines
from reductio import reducers, tasks
from reductio.errors import UserCodeError
from reductio.wire.partition import partition_file
from reductio.worker.output import PartitionedOutput
from reductio.worker.steps import _sum_loop_into, combine_into, sum_into, sum_runs_into

SUM = reducers.SUM  # the dotted path users write
# sum_into counts pairs in collections' C loop; where that loop is Python (PyPy), in a loop of its own: test both
BOTH_SUM_LOOPS = pytest.mark.parametrize("sum_loop", [sum_into, _sum_loop_into], ids=["C loop", "PyPy loop"])


def test_sum_totals_whole_numbers_and_names_a_value_that_is_not_one():
    assert list(reducers.sum("k", iter(["1", "-20", "300"]))) == [("k", "281")]
    with pytest.raises(UserCodeError) as failure:
        list(reducers.sum("k", iter(["1", "1.5"])))
    assert str(failure.value) == ("reductio.reducers.sum: value '1.5' of key 'k' is not a whole number"
                                  " (ASCII digits, optionally after a minus)")


NOT_WHOLE = ["1_000", " 5", "5 ", "\uff14", "\u0663", "+2", "", "-", "--1", "\u00b2", "1.0", "0x1", "5\r", "1e3"]


@pytest.mark.parametrize("value", NOT_WHOLE)
def test_sum_takes_ascii_digits_after_an_optional_minus_and_nothing_else(value):
    """What README says: Python's int() takes most of these (underscores, spaces, a plus, other scripts' digits)."""
    with pytest.raises(UserCodeError, match="is not a whole number"):
        list(reducers.sum("k", iter(["1", value])))
    assert list(reducers.sum("k", iter(["-0", "007", "-3"]))) == [("k", "4")]


def test_sum_takes_and_gives_numbers_of_any_length():
    """Python stops at 4,300 digits converting an int to or from text: sum does not."""
    nines = "9" * 4300
    assert list(reducers.sum("k", iter([nines] * 20))) == [("k", "1" + "9" * 4299 + "80")]  # 2 * 10**4301 - 20
    assert list(reducers.sum("k", iter(["-" + "1" * 9000, "1" * 9000]))) == [("k", "0")]


def _written(folder, step) -> list:
    output = PartitionedOutput(folder, 1, "test")
    step(output)
    output.close()
    return sorted((folder / partition_file(0, "test")).read_text(encoding="utf-8").splitlines())


@BOTH_SUM_LOOPS
@settings(max_examples=60, deadline=None)
@given(pairs=st.lists(st.tuples(st.sampled_from(["a", "b", "ü", "", "a b"]), st.integers(-5, 1000).map(str)),
                      max_size=200),
       limit=st.integers(1, 8))
def test_the_sum_combiner_gives_what_the_plain_combiner_gives(tmp_path_factory, sum_loop, pairs, limit):
    def mapper(key, value):
        return [(key, value)]

    plain = _written(tmp_path_factory.mktemp("plain"), lambda out: combine_into(
        mapper, "m", iter(pairs), reducers.sum, SUM, limit, out))
    fast = _written(tmp_path_factory.mktemp("fast"), lambda out: sum_loop(mapper, "m", iter(pairs), limit, out))
    totals = Counter()
    for key, value in pairs:
        totals[key] += int(value)
    # Both flush every `limit` held items, so each may write a key more than once; the totals agree.
    for lines in (plain, fast):
        summed = Counter()
        for line in lines:
            key, value = line.split("\t")
            summed[key] += int(value)
        assert summed == totals


@BOTH_SUM_LOOPS
@pytest.mark.parametrize("mapper, message", [
    (lambda k, v: [(k, 1)], "m yielded a value of type int"),
    (lambda k, v: [[k, v]], "m must yield (key, value) pairs of str (unhashable type: 'list')"),
    (lambda k, v: 7, "m must yield (key, value) pairs of str ('int' object is not iterable)"),
    (lambda k, v: [(k + "\t", v)], "m yielded a key holding a tab or newline"),
])
def test_the_sum_combiner_refuses_what_the_plain_one_refuses(tmp_path, sum_loop, mapper, message):
    output = PartitionedOutput(tmp_path, 1, "test")
    with pytest.raises(UserCodeError) as failure:
        sum_loop(mapper, "m", iter([("a", "1")]), 10, output)
    output.abandon()
    assert message in str(failure.value)


def _job(c, source, output, reducer, combine=""):
    tasks.load(c, str(source), "text")
    tasks.map(c, "wordjobs.words", "text", "pairs", combine=combine)
    tasks.scatter(c, "pairs", "here")
    tasks.sort(c, "here", "sorted")
    tasks.reduce(c, reducer, "sorted", "counts")
    tasks.merge(c, "counts", str(output))
    return output.read_bytes()


@pytest.mark.parametrize("workers, processes", [(2, 1), (1, 3)])
def test_a_job_reduced_and_combined_with_sum_matches_the_users_own_reducer_and_a_counter(
        tmp_path, capsys, workers, processes):
    rng = random.Random(5)
    words = [f"w{rng.randint(0, 3000)}" if rng.random() < 0.9 else rng.choice(["ü", "a\rb", "éé"])
             for _ in range(700_000)]
    lines = [" ".join(words[i:i + 10]) for i in range(0, len(words), 10)]  # about 4 MB
    source = write_lines(tmp_path / "in.txt", lines)
    c = make_context(workers, processes=processes)
    tasks.setup(c)
    own = _job(c, source, tmp_path / "own.tsv", "wordjobs.total")
    reduced = _job(c, source, tmp_path / "sum.tsv", SUM)
    if processes > 1:  # map and reduce were cut into shares: one output file per process
        files = files_per_dataset(c, capsys)
        assert files["pairs"] == processes and files["counts"] == processes
    combined = _job(c, source, tmp_path / "both.tsv", SUM, combine=SUM)
    assert reduced == own and combined == own
    expected = Counter(word for line in lines for word in line.split())
    assert {line.split("\t")[0]: int(line.split("\t")[1]) for line in own.decode().splitlines()} == expected


@pytest.mark.parametrize("lines, message", [
    (["a\t1", "a\t1", "b\t2", "b\tx", "c\t1"],
     "in.txt line 4 (s00000.load line 4): reductio.reducers.sum: value 'x' of key 'b' is not a whole number"),
    (["a\t1", "b\t1", "b\t1", "a\t1"], "s00000.load line 4: input is not sorted"),
])
def test_reduce_with_sum_names_the_line_of_a_bad_value_or_of_unsorted_input(tmp_path, lines, message):
    c = make_context(1)
    tasks.setup(c)
    tasks.load(c, str(write_lines(tmp_path / "in.txt", lines)), "text")
    with pytest.raises(Exit) as failure:
        tasks.reduce(c, SUM, "text", "counts")
    assert message in failure.value.message


def test_the_sum_combiner_names_the_line_whose_pair_is_refused(tmp_path):
    c = make_context(1)
    tasks.setup(c)
    tasks.load(c, str(write_lines(tmp_path / "in.txt", ["ok", "ok", "boom", "ok"])), "text")
    with pytest.raises(Exit) as failure:
        tasks.map(c, "wordjobs.raises_on_boom", "text", "pairs", combine=SUM)
    assert ("in.txt line 3 (s00000.load line 3): wordjobs.raises_on_boom raised ValueError: no booms allowed"
            in failure.value.message)
    with pytest.raises(Exit) as failure:
        tasks.map(c, "wordjobs.yields_int", "text", "pairs", combine=SUM)
    assert ("in.txt line 1 (s00000.load line 1): wordjobs.yields_int yielded a value of type int"
            in failure.value.message)


_FAST_SORTED_KEYS = ["a", "b", ""]
values_any = st.one_of(st.integers(-10 ** 30, 10 ** 30).map(str), st.sampled_from(NOT_WHOLE + ["0", "-0", "007"]),
                       st.sampled_from(["9" * 4400, "-" + "9" * 4400, "1" + "0" * 5000]))


def _plain(pairs):
    """reductio.reducers.sum called once per key (in key order), or the message it stops with."""
    pairs = sorted(pairs, key=lambda pair: pair[0])
    try:
        return [line for key, group in itertools.groupby(pairs, key=lambda pair: pair[0])
                for line in reducers.sum(key, (value for _, value in group))]
    except UserCodeError as err:
        return str(err)


def _fast(folder, step):
    """What a fast path writes, per key in key order, or the message it stops with."""
    output = PartitionedOutput(folder, 1, "test")
    try:
        step(output)
        output.close()
    except UserCodeError as err:
        output.abandon()
        return str(err)
    text = (folder / partition_file(0, "test")).read_text(encoding="utf-8")
    return [tuple(line.split("\t")) for line in sorted(text.split("\n")[:-1])]


@BOTH_SUM_LOOPS
@settings(max_examples=150, deadline=None)
@given(pairs=st.lists(st.tuples(st.sampled_from(_FAST_SORTED_KEYS), values_any), max_size=12))
def test_the_fast_paths_and_reductio_reducers_sum_agree_on_any_values(tmp_path_factory, sum_loop, pairs):
    """sum_runs_into (reduce) and sum_into (the combiner, limit above the pair count) give what sum gives, or
    stop with the same message."""
    expected = _plain(pairs)
    ordered = sorted(pairs, key=lambda pair: pair[0])
    runs = [(key, value, sum(1 for _ in group)) for (key, value), group in itertools.groupby(ordered)]
    reduced = _fast(tmp_path_factory.mktemp("runs"), lambda out: sum_runs_into(iter(runs), out))
    combined = _fast(tmp_path_factory.mktemp("combined"), lambda out: sum_loop(
        lambda k, v: [(k, v)], "m", iter(ordered), 10_000, out))
    if isinstance(expected, str):  # the first bad value may differ: each path meets values in its own order
        assert isinstance(reduced, str) and isinstance(combined, str)
        assert "is not a whole number (ASCII digits, optionally after a minus)" in reduced + combined
    else:
        assert reduced == combined == sorted(expected)


def test_a_job_sums_numbers_of_thousands_of_digits_with_the_combiner_and_reduce(tmp_path):
    nines = "9" * 4300
    c = make_context(2)
    tasks.setup(c)
    tasks.load(c, str(write_lines(tmp_path / "in.txt", [f"k\t{nines}"] * 20 + ["j\t-" + nines])), "text")
    for combine in ("", SUM):
        tasks.map(c, "wordjobs.identity", "text", "pairs", combine=combine)
        tasks.scatter(c, "pairs", "here")
        tasks.sort(c, "here", "sorted")
        tasks.reduce(c, SUM, "sorted", "sums")
        tasks.merge(c, "sums", str(tmp_path / "sums.tsv"))
        assert (tmp_path / "sums.tsv").read_text() == f"j\t-{nines}\nk\t1{'9' * 4299}80\n"


@pytest.mark.parametrize("value", ["1_000", "+2", "\uff14"])
def test_reduce_and_the_combiner_with_sum_stop_at_a_value_int_would_take(tmp_path, value):
    c = make_context(1)
    tasks.setup(c)
    tasks.load(c, str(write_lines(tmp_path / "in.txt", sorted(["a\t1", f"a\t{value}"]))), "text")
    for step in (lambda: tasks.reduce(c, SUM, "text", "sums"),
                 lambda: tasks.map(c, "wordjobs.identity", "text", "pairs", combine=SUM)):
        with pytest.raises(Exit) as failure:
            step()
        assert f"reductio.reducers.sum: value {value!r} of key 'a' is not a whole number" in failure.value.message
        assert "Traceback" not in failure.value.message
