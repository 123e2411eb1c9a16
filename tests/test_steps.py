"""Map, transform and reduce over in-memory records (map into a real output folder); loading functions; sort checks."""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

import pytest

import reductio
from reductio.errors import InputError, UserCodeError
from reductio.reducers import sum as sum_reducer
from reductio.wire.partition import partition_file, partition_of
from reductio.wire.sorting import sort_key
from reductio.wire.usercode import Output, load_function
from reductio.worker.output import BATCH, LINE_COST, REMEMBERED_LINE, PartitionedOutput
from reductio.worker.steps import (
    _sum_loop_into,
    check_sorted,
    combine_into,
    map_into,
    reduce_into,
    sum_into,
    transform_lines,
)

WORDJOBS = Path(__file__).parent / "_support" / "wordjobs"
PACKAGE_DIR = str(Path(reductio.__file__).resolve().parent)


@pytest.fixture
def wordjobs(monkeypatch):
    monkeypatch.syspath_prepend(str(WORDJOBS))
    import wordjobs

    return wordjobs


def _frames(details: str):
    """The file names of the traceback frames in a UserCodeError's details."""
    return re.findall(r'File "([^"]+)", line \d+, in (\S+)', details)


def _assert_only_user_frames(details: str, function_name: str) -> None:
    frames = _frames(details)
    assert frames, details
    assert function_name in [name for _, name in frames], details
    for filename, _ in frames:
        assert not str(Path(filename).resolve()).startswith(PACKAGE_DIR), details
    assert PACKAGE_DIR not in details


def _records(lines):
    return [tuple(line.split("\t", 1)) for line in lines]


def mapped(folder: Path, mapper, name: str, records, step=map_into) -> list:
    """The lines ``step`` (map_into, reduce_into) writes for ``records`` into a one-partition output in ``folder``."""
    output = PartitionedOutput(folder, 1, "test")
    try:
        step(mapper, name, records, output)
        output.close()
    except BaseException:
        output.abandon()
        raise
    text = (folder / partition_file(0, "test")).read_text(encoding="utf-8")
    return [line + "\n" for line in text.split("\n")[:-1]]


def test_map_writes_a_record_line_per_pair_the_mapper_yields(wordjobs, tmp_path):
    text = ["the quick brown fox", "jumps over the lazy dog", "", "the end"]
    out = mapped(tmp_path, wordjobs.words, "wordjobs.words", [(line, "") for line in text])
    expected = Counter(word for line in text for word in line.split())
    assert Counter(line[:-1].split("\t")[0] for line in out) == expected
    assert set(line[:-1].split("\t")[1] for line in out) == {"1"}


def test_map_keeps_tabs_in_values_and_the_order_of_the_input(wordjobs, tmp_path):
    records = [("b", "x\ty"), ("a", ""), ("", "empty key"), ("b", "again")]
    assert mapped(tmp_path, wordjobs.identity, "wordjobs.identity", records) == [
        "b\tx\ty\n", "a\t\n", "\tempty key\n", "b\tagain\n",
    ]


def test_map_treats_a_mapper_returning_none_as_yielding_nothing(wordjobs, tmp_path):
    assert mapped(tmp_path, wordjobs.returns_none, "wordjobs.returns_none", [("a", "1"), ("b", "2")]) == []


def test_map_accepts_a_mapper_returning_a_list_and_pairs_as_lists(tmp_path):
    assert mapped(tmp_path, lambda k, v: [(v, k), [k, v]], "swap", [("a", "1")]) == ["1\ta\n", "a\t1\n"]


def test_map_writes_each_pair_whatever_value_its_key_first_came_with(tmp_path):
    long_value = "v" * REMEMBERED_LINE  # its line is too long to be remembered
    records = [("a", "1"), ("a", "2"), ("a", "1"), ("b", long_value), ("b", long_value), ("b", "1"), ("a", "")]
    assert mapped(tmp_path, lambda k, v: [(k, v)], "ident", records) == [
        "a\t1\n", "a\t2\n", "a\t1\n", f"b\t{long_value}\n", f"b\t{long_value}\n", "b\t1\n", "a\t\n",
    ]


def test_map_refuses_a_newline_in_a_value_of_a_key_already_written(tmp_path):
    with pytest.raises(UserCodeError, match="yielded a value holding a newline"):
        mapped(tmp_path, lambda k, v: [(k, v)], "ident", [("a", "1"), ("a", "1\n")])


def test_map_routes_each_line_to_its_keys_partition_after_lines_written_by_write_all(tmp_path):
    keys = [f"k{i}" for i in range(50)]
    written = [f"{key}\tfirst\n" for key in keys[::2]]  # their keys remembered without a line
    mapped_lines = [line for key in keys * 2 for line in (f"{key}\tx\n", f"{key}\t1\n")]
    output = PartitionedOutput(tmp_path, 3, "test")
    output.write_all(iter(written))
    map_into(lambda k, v: [(k, v), (k, "1")], "ident", [(key, "x") for key in keys * 2], output)
    output.close()
    for p, path in enumerate(output.paths):
        expected = [line for line in written + mapped_lines if partition_of(line.split("\t")[0], 3) == p]
        assert expected and path.read_text(encoding="utf-8") == "".join(expected)


def test_map_appends_the_line_made_for_a_keys_first_value_when_the_pair_comes_again(tmp_path):
    """A mapper's (word, "1") makes one line per key, not one per pair: what keeps PyPy's map near its bare loop."""
    output = PartitionedOutput(tmp_path, 1, "test")
    map_into(lambda k, v: [(k, "1")] * 100, "ones", [("a", ""), ("b", "")], output)
    batch = output.batches[0]
    assert batch.count == 200 and len({id(line) for line in batch.lines[:batch.count]}) == 2
    output.close()


def test_map_writes_as_it_goes_holding_at_most_a_batch_of_lines(tmp_path):
    output = PartitionedOutput(tmp_path, 2, "test")
    sizes = []
    per_batch = -(-BATCH // (LINE_COST + len("100000\t\n")))  # lines that make a batch

    def records():
        for i in range(3 * per_batch):
            if i % per_batch == 0:
                sizes.append(sum(path.stat().st_size for path in output.paths))
            yield str(100_000 + i), ""

    map_into(lambda k, v: [(k, v)], "ident", records(), output)
    output.close()
    assert sizes[0] == 0 and sizes[1] > 0 and sizes[2] > sizes[1]
    assert sum(output.lines) == 3 * per_batch


@pytest.mark.parametrize("step", ["combine", "sum"])
def test_a_combiner_flushing_after_every_value_still_writes_as_it_goes(tmp_path, step):
    """combine_limit 1: the combiner's reducer (or sum's totals) runs after every value, and each run adds a
    line. Those lines count towards the batch from one run to the next, so the output is written as it
    goes, never held whole until the end."""
    output = PartitionedOutput(tmp_path, 2, "test")
    per_batch = -(-BATCH // (LINE_COST + len("100000\t1\n")))  # lines that make a batch
    held = []

    def records():
        for i in range(3 * per_batch):
            held.append(sum(batch.count for batch in output.batches))
            yield str(100_000 + i), ""

    if step == "combine":
        combine_into(lambda k, v: [(k, "1")], "ones", records(), sum_reducer, "sum", 1, output)
    else:
        sum_into(lambda k, v: [(k, "1")], "ones", records(), 1, output)
    output.close()
    assert max(held) <= per_batch
    assert sum(output.lines) == 3 * per_batch


@pytest.mark.parametrize(
    "function, message",
    [
        ("yields_int", "wordjobs.yields_int yielded a value of type int"),
        ("yields_triple", "wordjobs.yields_triple yielded ('a', 'b', 'extra'), not a (key, value) pair"),
        ("yields_tab_key", "wordjobs.yields_tab_key yielded a key holding a tab or newline"),
        ("yields_newline_value", "wordjobs.yields_newline_value yielded a value holding a newline"),
    ],
)
def test_map_refuses_a_bad_yield_naming_the_function(wordjobs, function, message, tmp_path):
    with pytest.raises(UserCodeError) as caught:
        mapped(tmp_path, getattr(wordjobs, function), f"wordjobs.{function}", [("a", "b")])
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize("combiner", ["none", "sum", "sum, PyPy's loop", "any reducer"])
@pytest.mark.parametrize("bad, message", [
    ("ab", "m yielded 'ab', not a (key, value) pair"),  # a mapper that forgot the value: never key 'a', value 'b'
    (("a", "1", "x"), "m yielded ('a', '1', 'x'), not a (key, value) pair (3 items)"),
])
def test_map_refuses_a_str_or_a_triple_for_a_pair_with_or_without_a_combiner(tmp_path, combiner, bad, message):
    def mapper(key, value):
        yield key, "1"
        yield bad

    records = [("k", ""), ("a", "")]
    steps = {"none": map_into,
             "sum": lambda m, n, r, out: sum_into(m, n, r, 100, out),
             "sum, PyPy's loop": lambda m, n, r, out: _sum_loop_into(m, n, r, 100, out),
             "any reducer": lambda m, n, r, out: combine_into(m, n, r, sum_reducer, "sum", 100, out)}
    with pytest.raises(UserCodeError) as caught:
        mapped(tmp_path, mapper, "m", records, step=steps[combiner])
    assert str(caught.value) == message


def test_map_refuses_a_bad_key_even_after_good_pairs_with_other_keys(tmp_path):
    records = [("a", "1"), ("b", "2"), ("a\tb", "3")]
    with pytest.raises(UserCodeError, match="yielded a key holding a tab or newline"):
        mapped(tmp_path, lambda k, v: [(k, v)], "tests.ident", records)


def test_an_os_error_in_the_mapper_is_the_users_error_not_a_disk_error(tmp_path):
    def opens_missing(key, value):
        yield key, open(tmp_path / "no-such-file").read()

    with pytest.raises(UserCodeError, match="tests.opens raised FileNotFoundError"):
        mapped(tmp_path, opens_missing, "tests.opens", [("a", "1")])


def test_map_refuses_a_lone_surrogate_saying_it_is_not_valid_unicode(tmp_path):
    with pytest.raises(UserCodeError, match="not valid Unicode"):
        mapped(tmp_path, lambda k, v: [(k, v)], "tests.ident", [("ok", "1"), ("bad\udcff", "2")])


def test_a_mapper_exception_becomes_a_user_code_error_with_only_the_users_frames(wordjobs, tmp_path):
    records = [("fine", "1"), ("boom", "2"), ("never", "3")]
    with pytest.raises(UserCodeError) as caught:
        mapped(tmp_path, wordjobs.raises_on_boom, "wordjobs.raises_on_boom", records)
    error = caught.value
    assert str(error) == "wordjobs.raises_on_boom raised ValueError: no booms allowed"
    assert "no booms allowed" in error.details
    assert error.details.startswith("Traceback (user code):")
    _assert_only_user_frames(error.details, "raises_on_boom")
    assert any(Path(f).resolve() == (WORDJOBS / "wordjobs" / "__init__.py").resolve()
               for f, _ in _frames(error.details))


def _helper_that_divides(n):
    return 1 / n


def _exploding_reducer(key, values):
    for value in values:
        yield key, str(_helper_that_divides(int(value)))


def test_a_reducer_exception_names_the_key_and_keeps_the_users_nested_frames(tmp_path):
    records = [("a", "1"), ("b", "2"), ("c", "0")]
    with pytest.raises(UserCodeError) as caught:
        mapped(tmp_path, _exploding_reducer, "tests.explode", records, step=reduce_into)
    error = caught.value
    assert str(error).startswith("tests.explode raised on key 'c' ZeroDivisionError:")
    _assert_only_user_frames(error.details, "_exploding_reducer")
    assert "_helper_that_divides" in [name for _, name in _frames(error.details)]
    assert "ZeroDivisionError" in error.details.splitlines()[-1]


def test_a_transform_exception_becomes_a_user_code_error_with_only_the_users_frames():
    def shout(line, out):
        if line == "bad":
            raise KeyError("no bad lines")
        out.write(line.upper())

    lines = transform_lines(shout, "tests.shout", ["ok", "bad"])
    assert next(lines) == "OK\n"
    with pytest.raises(UserCodeError) as caught:
        next(lines)
    assert str(caught.value) == "tests.shout raised KeyError: 'no bad lines'"
    _assert_only_user_frames(caught.value.details, "shout")


def test_transform_lines_yields_what_the_function_wrote_pairs_and_text(wordjobs):
    out = list(transform_lines(wordjobs.split_words, "wordjobs.split_words", ["a b", "", "c\tz"]))
    assert out == ["a\t1\n", "b\t1\n", "raw:a b\n", "raw:\n", "c\t1\n", "z\t1\n", "raw:c\tz\n"]


def test_transform_lines_refuses_a_bad_write_naming_the_function():
    def writes_bytes(line, out):
        out.write(line.encode())

    with pytest.raises(UserCodeError, match="^tests.bytes wrote a bytes; out.write takes str$"):
        list(transform_lines(writes_bytes, "tests.bytes", ["x"]))


def test_output_collects_pairs_and_lines():
    out = Output("tests.out")
    out.write_pair("k", "v\tw")
    out.write("text line\n")
    assert out.written == ["k\tv\tw\n", "text line\n"]
    with pytest.raises(UserCodeError, match="tests.out yielded a value of type int"):
        out.write_pair("k", 1)


def test_reduce_calls_the_reducer_once_per_run_of_equal_keys(wordjobs, tmp_path):
    words = "b a c a b a d".split()
    lines = sorted(f"{word}\t{n}" for n, word in enumerate(words, 1))
    out = mapped(tmp_path, wordjobs.total, "wordjobs.total", _records(lines), step=reduce_into)
    expected = Counter()
    for n, word in enumerate(words, 1):
        expected[word] += n
    assert out == [f"{word}\t{expected[word]}\n" for word in sorted(expected)]


def test_reduce_gives_values_as_a_lazy_iterator(tmp_path):
    consumed = []

    def records():
        for key, value in [("a", "1"), ("a", "2"), ("a", "3"), ("b", "4")]:
            consumed.append(value)
            yield key, value

    calls = []

    def reducer(key, values):
        calls.append((key, type(values), list(consumed)))
        assert iter(values) is values  # an iterator, not a list
        yield key, ",".join(values)

    out = mapped(tmp_path, reducer, "tests.lazy", records(), step=reduce_into)
    assert out == ["a\t1,2,3\n", "b\t4\n"]
    assert not issubclass(calls[0][1], (list, tuple))
    assert calls[0][2] == ["1"]  # only the first record was read when the reducer started


def test_a_reducer_consuming_only_the_first_value_still_gets_every_following_key(wordjobs, tmp_path):
    lines = sorted(["a\t1", "a\t2", "a\t3", "b\t9", "c\t5", "c\t6", "d\t7"])
    out = mapped(tmp_path, wordjobs.first_value, "wordjobs.first_value", _records(lines), step=reduce_into)
    assert out == ["a\t1\n", "b\t9\n", "c\t5\n", "d\t7\n"]


def test_a_reducer_consuming_no_value_still_gets_every_key(tmp_path):
    lines = sorted(["a\t1", "a\t2", "b\t3", "b\t4", "c\t5"])
    out = mapped(tmp_path, lambda key, values: [(key, "seen")], "tests.none", _records(lines), step=reduce_into)
    assert out == ["a\tseen\n", "b\tseen\n", "c\tseen\n"]


def test_keys_that_are_prefixes_of_other_keys_group_correctly_in_sorted_order(wordjobs, tmp_path):
    pairs = [("a", "1"), ("ab", "2"), ("a\x01", "3"), ("a", "4"), ("", "5"), ("ab", "6"),
             ("a\x01", "7"), ("a b", "8"), ("a", "10"), ("\u00e4", "11"), ("a\x01b", "12")]
    lines = sorted(f"{key}\t{value}" for key, value in pairs)
    out = mapped(tmp_path, wordjobs.total, "wordjobs.total", _records(lines), step=reduce_into)
    keys = [line.split("\t")[0] for line in out]
    assert len(keys) == len(set(keys)), out
    expected = Counter()
    for key, value in pairs:
        expected[key] += int(value)
    assert dict(line[:-1].split("\t") for line in out) == {k: str(v) for k, v in expected.items()}


def test_reduce_treats_a_reducer_returning_none_as_yielding_nothing(tmp_path):
    assert mapped(tmp_path, lambda k, vs: None, "tests.none", [("a", "1")], step=reduce_into) == []


def test_load_function_imports_a_dotted_path(wordjobs):
    assert load_function("wordjobs.words") is wordjobs.words
    assert load_function("os.path.join") is __import__("os").path.join


def test_load_function_refuses_a_path_without_a_dot():
    with pytest.raises(UserCodeError) as caught:
        load_function("words")
    assert str(caught.value) == "function 'words' is not a dotted path like 'package.module.function'"


def test_load_function_refuses_a_missing_module():
    with pytest.raises(UserCodeError) as caught:
        load_function("no_such_module_here.words")
    assert str(caught.value) == ("function 'no_such_module_here.words' does not import, raising"
                                 " ModuleNotFoundError: No module named 'no_such_module_here'")
    assert caught.value.details == "ModuleNotFoundError: No module named 'no_such_module_here'\n"  # no empty traceback


def test_load_function_refuses_a_missing_attribute(wordjobs):
    with pytest.raises(UserCodeError) as caught:
        load_function("wordjobs.no_such_function")
    assert str(caught.value) == ("function 'wordjobs.no_such_function':"
                                 " module 'wordjobs' has no function 'no_such_function'")


def test_load_function_refuses_something_that_is_not_callable(wordjobs):
    with pytest.raises(UserCodeError) as caught:
        load_function("wordjobs.not_a_function")
    assert str(caught.value) == "function 'wordjobs.not_a_function': module 'wordjobs' has no function 'not_a_function'"


def test_load_function_reports_an_error_raised_while_importing_the_users_module(tmp_path, monkeypatch):
    (tmp_path / "brokenjobs_x1.py").write_text("def helper():\n    raise RuntimeError('setup failed')\n\nhelper()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "brokenjobs_x1", raising=False)
    with pytest.raises(UserCodeError) as caught:
        load_function("brokenjobs_x1.anything")
    error = caught.value
    assert str(error) == "function 'brokenjobs_x1.anything' does not import, raising RuntimeError: setup failed"
    _assert_only_user_frames(error.details, "helper")
    assert "importlib" not in error.details
    sys.modules.pop("brokenjobs_x1", None)


def test_check_sorted_passes_sorted_lines_through_unchanged():
    lines = sorted(["b", "a", "a", "a\tx", "a\x01", "a\x01\ty", "\u00fc", "\U0001f600", ""], key=sort_key)
    assert lines.index("a\tx") < lines.index("a\x01")  # key first: all of key a before key a\x01
    assert list(check_sorted(iter(lines), "p00000.w0")) == lines


def test_check_sorted_raises_an_input_error_naming_file_and_line_when_out_of_order():
    lines = ["a\t1", "b\t2", "a\t3", "c\t4"]
    checked = check_sorted(iter(lines), "p00001.w2")
    assert next(checked) == "a\t1"
    assert next(checked) == "b\t2"
    with pytest.raises(InputError) as caught:
        next(checked)
    message = str(caught.value)
    assert message.startswith("p00001.w2 line 3: input is not sorted")
    assert "'a\\t3'" in message and "'b\\t2'" in message


def test_check_sorted_uses_code_point_order_like_c_locale_sort():
    # "a\tx" sorts before "a b" in byte order (tab 0x09 < space 0x20)
    with pytest.raises(InputError, match="line 2"):
        list(check_sorted(iter(["a b", "a\tx"]), "f"))
    # "Z" (0x5a) sorts before "a" (0x61), whatever a locale would say
    with pytest.raises(InputError, match="line 2"):
        list(check_sorted(iter(["a", "Z"]), "f"))
