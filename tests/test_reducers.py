"""reductio.reducers.sum: its own loops in reduce and the combiner give what the plain reducer gives."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from invoke import Exit

from conftest import files_per_dataset, make_context, write_lines
from reductio import reducers, tasks
from reductio.errors import UserCodeError
from reductio.output import PartitionedOutput
from reductio.steps import combine_into, sum_into
from reductio.store import partition_file

SUM = reducers.SUM  # the dotted path users write


def test_sum_totals_whole_numbers_and_names_a_value_that_is_not_one():
    assert list(reducers.sum("k", iter(["1", "-20", "300"]))) == [("k", "281")]
    with pytest.raises(UserCodeError) as failure:
        list(reducers.sum("k", iter(["1", "1.5"])))
    assert str(failure.value) == "reductio.reducers.sum: value '1.5' of key 'k' is not a whole number"


def _written(folder, step) -> list:
    output = PartitionedOutput(folder, 1, "test")
    step(output)
    output.close()
    return sorted((folder / partition_file(0, "test")).read_text(encoding="utf-8").splitlines())


@settings(max_examples=60, deadline=None)
@given(pairs=st.lists(st.tuples(st.sampled_from(["a", "b", "ü", "", "a b"]), st.integers(-5, 1000).map(str)),
                      max_size=200),
       limit=st.integers(1, 8))
def test_the_sum_combiner_gives_what_the_plain_combiner_gives(tmp_path_factory, pairs, limit):
    def mapper(key, value):
        return [(key, value)]

    plain = _written(tmp_path_factory.mktemp("plain"), lambda out: combine_into(
        mapper, "m", iter(pairs), reducers.sum, SUM, limit, out))
    fast = _written(tmp_path_factory.mktemp("fast"), lambda out: sum_into(mapper, "m", iter(pairs), limit, out))
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


@pytest.mark.parametrize("mapper, message", [
    (lambda k, v: [(k, 1)], "m yielded a value of type int"),
    (lambda k, v: [[k, v]], "m must yield (key, value) pairs of str (unhashable type: 'list')"),
    (lambda k, v: 7, "m must yield (key, value) pairs of str ('int' object is not iterable)"),
    (lambda k, v: [(k + "\t", v)], "m yielded a key holding a tab or newline"),
])
def test_the_sum_combiner_refuses_what_the_plain_one_refuses(tmp_path, mapper, message):
    output = PartitionedOutput(tmp_path, 1, "test")
    with pytest.raises(UserCodeError) as failure:
        sum_into(mapper, "m", iter([("a", "1")]), 10, output)
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
    (["a\t1", "a\t1", "b\t2", "b\tx", "c\t1"], "line 4: reductio.reducers.sum: value 'x' of key 'b' is not a whole number"),
    (["a\t1", "b\t1", "b\t1", "a\t1"], "line 4: input is not sorted"),
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
    assert "line 3: wordjobs.raises_on_boom raised ValueError: no booms allowed" in failure.value.message
    with pytest.raises(Exit) as failure:
        tasks.map(c, "wordjobs.yields_int", "text", "pairs", combine=SUM)
    assert "line 1: wordjobs.yields_int yielded a value of type int" in failure.value.message
