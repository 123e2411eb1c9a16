"""The key<TAB>value wire format: reading lines, splitting records, formatting pairs and lines."""

from __future__ import annotations

import pytest

from reductio.errors import InputError, UserCodeError
from reductio.wire.records import format_line, format_record, key_of, read_lines, split_record


def test_read_lines_splits_only_on_line_feed(tmp_path):
    path = tmp_path / "odd.txt"
    path.write_bytes("a\rb\n\x0bc\x1cd\ne\u2028f\x85g\x0ch\n".encode("utf-8"))
    assert list(read_lines(path)) == ["a\rb", "\x0bc\x1cd", "e\u2028f\x85g\x0ch"]


def test_read_lines_keeps_a_carriage_return_before_the_line_feed(tmp_path):
    path = tmp_path / "crlf.txt"
    path.write_bytes(b"one\r\ntwo\r\n")
    assert list(read_lines(path)) == ["one\r", "two\r"]


def test_read_lines_yields_a_last_line_without_its_line_feed(tmp_path):
    path = tmp_path / "last.txt"
    path.write_bytes("first\nzweite \u00fc\nlast".encode("utf-8"))
    assert list(read_lines(path)) == ["first", "zweite \u00fc", "last"]


def test_read_lines_keeps_empty_lines(tmp_path):
    path = tmp_path / "empty-lines.txt"
    path.write_bytes(b"\n\nx\n\n")
    assert list(read_lines(path)) == ["", "", "x", ""]


def test_read_lines_of_an_empty_file_yields_nothing(tmp_path):
    path = tmp_path / "nothing.txt"
    path.write_bytes(b"")
    assert list(read_lines(path)) == []


def test_invalid_utf8_is_an_input_error_naming_file_line_and_byte_offset(tmp_path):
    data = "good line\nsecond \u00e9\u00e9\n".encode("utf-8") + b"third \xff bad\nfourth\n"
    path = tmp_path / "broken.txt"
    path.write_bytes(data)
    with pytest.raises(InputError) as caught:
        list(read_lines(path))
    offset = data.index(b"\xff")
    assert str(caught.value) == f"broken.txt line 3: invalid UTF-8 at byte offset {offset}"


def test_invalid_utf8_beyond_the_read_buffer_names_its_true_offset(tmp_path):
    body = ("x" * 99 + "\n").encode("utf-8") * 30000  # 3 MB, several read buffers
    data = body + b"ok\nbad \xc3\x28 here\n"
    path = tmp_path / "big.txt"
    path.write_bytes(data)
    with pytest.raises(InputError) as caught:
        list(read_lines(path))
    offset = data.index(b"\xc3\x28")
    assert str(caught.value) == f"big.txt line 30002: invalid UTF-8 at byte offset {offset}"


def test_a_truncated_character_at_the_end_is_an_input_error_with_its_offset(tmp_path):
    data = b"ok\nend \xe2\x82"
    path = tmp_path / "cut.txt"
    path.write_bytes(data)
    with pytest.raises(InputError) as caught:
        list(read_lines(path))
    offset = data.index(b"\xe2")
    assert str(caught.value) == f"cut.txt line 2: invalid UTF-8 at byte offset {offset}"


def test_split_record_splits_at_the_first_tab(tmp_path):
    path = tmp_path / "p00000.w0"
    assert split_record("key\tvalue\twith tab", path, 1) == ("key", "value\twith tab")
    assert split_record("\tvalue", path, 1) == ("", "value")
    assert split_record("key\t", path, 1) == ("key", "")


def test_split_record_refuses_a_line_without_tab_naming_file_and_line(tmp_path):
    path = tmp_path / "p00003.w1"
    with pytest.raises(InputError) as caught:
        split_record("just words", path, 17)
    message = str(caught.value)
    assert message.startswith("p00003.w1 line 17: ")
    assert "no tab" in message
    assert "just words" in message


def test_format_record_writes_key_tab_value_line_feed():
    assert format_record(("word", "3"), "jobs.count") == "word\t3\n"


def test_format_record_allows_tabs_in_the_value():
    assert format_record(("k", "a\tb\t"), "f") == "k\ta\tb\t\n"


def test_format_record_allows_an_empty_key_and_an_empty_value():
    assert format_record(("", "v"), "f") == "\tv\n"
    assert format_record(("k", ""), "f") == "k\t\n"
    assert format_record(("", ""), "f") == "\t\n"


def test_format_record_keeps_carriage_returns_and_other_separators():
    assert format_record(("a\rb", "c\u2028d\x0b"), "f") == "a\rb\tc\u2028d\x0b\n"


def test_format_record_accepts_a_list_of_two_str():
    assert format_record(["k", "v"], "f") == "k\tv\n"


def test_format_record_refuses_a_three_tuple_naming_the_function():
    with pytest.raises(UserCodeError) as caught:
        format_record(("k", "v", "extra"), "jobs.triple")
    message = str(caught.value)
    assert message.startswith("jobs.triple yielded ")
    assert "'extra'" in message
    assert "not a (key, value) pair" in message


def test_format_record_refuses_an_int_instead_of_a_pair():
    with pytest.raises(UserCodeError) as caught:
        format_record(7, "jobs.count")
    assert str(caught.value) == "jobs.count yielded 7, not a (key, value) pair"


def test_format_record_refuses_a_one_tuple():
    with pytest.raises(UserCodeError) as caught:
        format_record(("only",), "f")
    assert str(caught.value) == "f yielded ('only',), not a (key, value) pair (1 item)"


def test_format_record_refuses_an_int_value_saying_keys_and_values_must_be_str():
    with pytest.raises(UserCodeError) as caught:
        format_record(("word", 1), "jobs.count")
    message = str(caught.value)
    assert message.startswith("jobs.count yielded a value of type int")
    assert message.endswith("keys and values must be str")


def test_format_record_refuses_a_non_str_key_saying_keys_and_values_must_be_str():
    with pytest.raises(UserCodeError) as caught:
        format_record((b"word", "1"), "jobs.count")
    message = str(caught.value)
    assert message.startswith("jobs.count yielded a key of type bytes")
    assert message.endswith("keys and values must be str")


def test_format_record_refuses_none_as_value():
    with pytest.raises(UserCodeError, match="value of type NoneType"):
        format_record(("k", None), "f")


@pytest.mark.parametrize("key", ["a\tb", "\t", "a\nb", "a\n"])
def test_format_record_refuses_a_tab_or_newline_in_the_key(key):
    with pytest.raises(UserCodeError) as caught:
        format_record((key, "v"), "jobs.bad_key")
    message = str(caught.value)
    assert message.startswith("jobs.bad_key yielded a key holding a tab or newline")


@pytest.mark.parametrize("value", ["a\nb", "\n", "trailing\n"])
def test_format_record_refuses_a_newline_in_the_value(value):
    with pytest.raises(UserCodeError) as caught:
        format_record(("k", value), "jobs.bad_value")
    assert str(caught.value).startswith("jobs.bad_value yielded a value holding a newline")


def test_format_line_adds_a_missing_line_feed_and_keeps_a_present_one():
    assert format_line("no tab here", "f") == "no tab here\n"
    assert format_line("k\tv\n", "f") == "k\tv\n"
    assert format_line("", "f") == "\n"
    assert format_line("cr\r", "f") == "cr\r\n"


def test_format_line_refuses_several_lines_at_once():
    with pytest.raises(UserCodeError) as caught:
        format_line("one\ntwo", "jobs.writer")
    assert str(caught.value).startswith("jobs.writer wrote several lines at once")
    with pytest.raises(UserCodeError):
        format_line("one\n\n", "jobs.writer")


def test_format_line_refuses_what_is_not_str():
    with pytest.raises(UserCodeError) as caught:
        format_line(b"bytes", "jobs.writer")
    assert str(caught.value) == "jobs.writer wrote a bytes; out.write takes str"


def test_key_of_is_everything_before_the_first_tab():
    assert key_of("k\tv\tw") == "k"
    assert key_of("\tv") == ""
    assert key_of("whole line") == "whole line"
