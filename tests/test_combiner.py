"""A combiner changes how much data moves, never the answer."""

from __future__ import annotations

import pytest

from conftest import make_context, write_lines
from oracles import count_table, merged_lines, word_counts
from reductio import tasks
from reductio.wire.partition import partition_file
from reductio.worker.output import PartitionedOutput
from reductio.worker.steps import combine_into


def run_wordcount(c, source, output, combine=""):
    tasks.load(c, str(source), "text")
    tasks.map(c, "wordjobs.words", "text", "pairs", combine=combine)
    tasks.scatter(c, "pairs", "here")
    tasks.sort(c, "here", "sorted")
    tasks.reduce(c, "wordjobs.total", "sorted", "counts")
    tasks.merge(c, "counts", str(output))
    return output.read_bytes()


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("limit", [None, 7])
def test_wordcount_with_a_combiner_equals_wordcount_without(workers, limit, tmp_path, capsys):
    lines = [" ".join(f"w{(i * j) % 53}" for j in range(1, 9)) for i in range(400)] + ["", "ünï ünï"]
    source = write_lines(tmp_path / "in.txt", lines)
    c = make_context(workers, combine_limit=limit)
    tasks.setup(c)
    plain = run_wordcount(c, source, tmp_path / "plain.tsv")
    capsys.readouterr()
    combined = run_wordcount(c, source, tmp_path / "combined.tsv", combine="wordjobs.total")
    assert combined == plain
    assert merged_lines(tmp_path / "combined.tsv") == count_table(word_counts(lines))
    map_total = [row.split() for row in capsys.readouterr().out.splitlines() if row.strip().startswith("total")][0]
    words = sum(len(line.split()) for line in lines)
    assert int(map_total[2].replace(",", "")) < words  # fewer pairs left the map than words went in


def test_the_combiner_holds_at_most_limit_values_before_it_flushes(tmp_path):
    calls = []

    def total(key, values):
        values = list(values)
        calls.append(len(values))
        yield key, str(sum(int(v) for v in values))

    pairs = [("a", "1")] * 25 + [("b", "2")] * 5
    output = PartitionedOutput(tmp_path, 1, "test")
    combine_into(lambda k, v: [(k, v)], "ident", iter(pairs), total, "total", 10, output)
    output.close()
    lines = (tmp_path / partition_file(0, "test")).read_text().splitlines()
    assert max(calls) <= 10
    assert sum(int(line.split("\t")[1]) for line in lines if line.startswith("a\t")) == 25
    assert sum(int(line.split("\t")[1]) for line in lines if line.startswith("b\t")) == 10


def test_a_combiner_that_raises_is_named_with_the_key(tmp_path):
    c = make_context(1)
    tasks.setup(c)
    tasks.load(c, str(write_lines(tmp_path / "in.txt", ["boom"])), "text")
    from invoke import Exit

    with pytest.raises(Exit) as failure:
        tasks.map(c, "wordjobs.words", "text", "pairs", combine="wordjobs.first_value_raising")
    assert "wordjobs.first_value_raising raised on key 'boom'" in failure.value.message


def test_a_map_with_a_combiner_is_not_up_to_date_under_another_combine_limit(tmp_path, capsys):
    """combine_limit changes which pairs are combined together, so what the map writes."""
    source = write_lines(tmp_path / "in.txt", ["a a a a b"])
    c = make_context(1)
    tasks.setup(c)
    tasks.load(c, str(source), "text")

    def mapped(context):
        capsys.readouterr()
        tasks.map(context, "wordjobs.words", "text", "pairs", combine="wordjobs.total")
        printed = capsys.readouterr().out
        tasks.merge(context, "pairs", str(tmp_path / "pairs.tsv"))
        return sorted((tmp_path / "pairs.tsv").read_text().splitlines()), printed

    assert mapped(c)[0] == ["a\t4", "b\t1"]
    assert "up to date" in mapped(c)[1]
    lines, printed = mapped(make_context(1, combine_limit=2))
    assert "up to date" not in printed and lines == ["a\t2", "a\t2", "b\t1"]
