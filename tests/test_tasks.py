"""The tasks not exercised end to end elsewhere, on local workers, against independent computations."""

from __future__ import annotations

import gzip
import logging
import os
import re
from collections import Counter
from pathlib import Path

import pytest
from invoke import Exit

from conftest import make_context, write_lines
from reductio import tasks


def homes():
    return sorted((Path(os.environ["HOME"]) / ".reductio" / "local").iterdir())


def table(path: Path) -> dict:
    return dict(line.split("\t", 1) for line in path.read_text(encoding="utf-8").splitlines())


@pytest.fixture
def c():
    context = make_context(2)
    tasks.setup(context)
    return context


def test_initialize_spreads_what_the_generator_writes_over_the_workers(c, tmp_path):
    tasks.initialize(c, "wordjobs.generate", "generated")
    tasks.map(c, "wordjobs.identity", "generated", "pairs")
    tasks.scatter(c, "pairs", "here")
    tasks.sort(c, "here", "sorted")
    tasks.reduce(c, "wordjobs.gather", "sorted", "gathered")
    tasks.merge(c, "gathered", str(tmp_path / "gathered.tsv"))
    expected = {}
    for i in range(1000):
        expected.setdefault(f"k{i % 17}", []).append(str(i))
    expected["no tab here"] = [""]
    assert table(tmp_path / "gathered.tsv") == {
        key: "\t".join([str(len(values))] + sorted(values)) for key, values in expected.items()}
    assert all((home / "data" / "generated" / "_SUCCESS").exists() for home in homes())


def test_transform_gets_raw_lines_and_writes_pairs_and_text(c, tmp_path):
    lines = ["the cat\tsat", "on the mat", ""]
    tasks.load(c, str(write_lines(tmp_path / "in.txt", lines)), "text")
    tasks.transform(c, "wordjobs.split_words", "text", "out")
    tasks.merge(c, "out", str(tmp_path / "out.tsv"))
    got = sorted((tmp_path / "out.tsv").read_text().splitlines())
    expected = sorted([f"{w}\t1" for line in lines for w in line.split()] + [f"raw:{line}" for line in lines])
    assert got == expected


def test_sort_unique_keeps_one_copy_of_each_identical_line(c, tmp_path):
    lines = ["b\t1", "a\t1", "b\t1", "b\t2", "a\t1", "ä\t1"]
    tasks.load(c, str(write_lines(tmp_path / "in.txt", lines)), "text")
    tasks.map(c, "wordjobs.identity", "text", "pairs")
    tasks.scatter(c, "pairs", "here")
    tasks.sort_unique(c, "here", "unique")
    tasks.merge(c, "unique", str(tmp_path / "out.tsv"))
    assert (tmp_path / "out.tsv").read_bytes() == "".join(
        line + "\n" for line in sorted(set(lines), key=str.encode)).encode()


def test_load_reads_a_folder_of_plain_and_gzipped_files_spreading_lines_over_all_workers(c, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write_lines(folder / "a.txt", [f"a{i}" for i in range(3000)])
    with gzip.open(folder / "b.txt.gz", "wt", encoding="utf-8") as packed:
        packed.write("".join(f"b{i}\r\n" for i in range(3000)))
    (folder / ".hidden").write_text("never read\n")
    tasks.load(c, str(folder), "text")
    held = [{line[0] for p in (h / "data" / "text").glob("s*") for line in p.read_text().splitlines()} for h in homes()]
    assert held == [{"a", "b"}, {"a", "b"}]  # each file, the .gz too, dealt over every worker
    tasks.merge(c, "text", str(tmp_path / "made" / "all.txt"))  # merge makes the folder
    assert sorted((tmp_path / "made" / "all.txt").read_text().splitlines()) == sorted(
        [f"a{i}" for i in range(3000)] + [f"b{i}" for i in range(3000)])


def test_status_lists_each_workers_datasets_and_delete_removes_them_everywhere(c, tmp_path, capsys):
    tasks.load(c, str(write_lines(tmp_path / "in.txt", ["x\t1", "y\t2", "z\t3"])), "text")
    capsys.readouterr()
    tasks.status(c)
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert [(row[0], row[1], row[2], row[3]) for row in rows] == [
        ("local-0", "text", "ok", "load"), ("local-1", "text", "ok", "load")]
    assert sum(int(row[6]) for row in rows) == 3
    tasks.delete(c, "text")
    assert "removed from 2 of 2" in capsys.readouterr().out
    assert not any((home / "data" / "text").exists() for home in homes())
    assert all(list((home / "store").iterdir()) == [] for home in homes())
    tasks.status(c)
    assert "no datasets on any worker" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["..", "a/b", "../up", "with space", "semi;colon", "$(whoami)", "ünïcode", "",
                                  ".hidden"])
def test_bad_dataset_names_are_refused_before_any_worker_is_touched(c, tmp_path, name):
    before = [sorted(p.name for p in (h / "data").iterdir()) for h in homes()]
    with pytest.raises(Exit) as failure:
        tasks.load(c, str(write_lines(tmp_path / "in.txt", ["a"])), name)
    assert "bad dataset name" in failure.value.message
    with pytest.raises(Exit):
        tasks.map(c, "wordjobs.identity", name, "ok")
    assert [sorted(p.name for p in (h / "data").iterdir()) for h in homes()] == before
    assert all(list((h / "tmp").iterdir()) == [] for h in homes())


def test_a_records_line_without_a_tab_stops_reduce_naming_worker_file_and_line(c, tmp_path):
    tasks.load(c, str(write_lines(tmp_path / "in.txt", ["a\t1", "b\t2"])), "text")
    tasks.map(c, "wordjobs.identity", "text", "pairs")
    tasks.scatter(c, "pairs", "here")
    tasks.sort(c, "here", "sorted")
    files = [(h, f) for h in homes() for f in (h / "data" / "sorted").resolve().glob("sorted.*") if f.stat().st_size]
    victim, data = files[0]
    line = len(data.read_text().splitlines()) + 1
    data.write_text(data.read_text() + "notab\n")  # a damaged file
    with pytest.raises(Exit) as failure:
        tasks.reduce(c, "wordjobs.total", "sorted", "out")
    message = failure.value.message
    assert f"local-{homes().index(victim)}: {data.name} line {line}: no tab in record 'notab'" in message


def test_a_function_path_that_does_not_import_or_yields_a_bad_pair_is_a_clear_error(c, tmp_path):
    tasks.load(c, str(write_lines(tmp_path / "in.txt", ["a\t1"])), "text")
    cases = {
        "nosuchmodule.f": "does not import",
        "wordjobs.nosuch": "has no function 'nosuch'",
        "wordjobs.yields_triple": "not a (key, value) pair",
        "wordjobs.yields_int": "keys and values must be str",
        "wordjobs.yields_tab_key": "holding a tab or newline",
        "wordjobs.yields_newline_value": "holding a newline",
    }
    for function, expected in cases.items():
        with pytest.raises(Exit) as failure:
            tasks.map(c, function, "text", "out")
        assert expected in failure.value.message, function
        assert "Traceback (most recent call last)" not in failure.value.message
    assert not any((h / "data" / "out").exists() for h in homes())


def test_load_stops_at_invalid_utf8_naming_the_file_and_byte_offset(c, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\nalso fine\nbro\xffken\n")
    with pytest.raises(Exit) as failure:
        tasks.load(c, str(bad), "text")
    assert f"{bad}: invalid UTF-8 at byte offset 18" in failure.value.message
    assert not any((h / "data" / "text").exists() for h in homes())


def test_load_turns_crlf_into_lf_and_ends_the_last_line(c, tmp_path):
    crlf = tmp_path / "dos.txt"
    crlf.write_bytes(b"a\tone\r\nb\ttwo\r\nc\tthree")
    tasks.load(c, str(crlf), "text")
    tasks.merge(c, "text", str(tmp_path / "out.txt"))
    assert (tmp_path / "out.txt").read_bytes() == b"a\tone\nb\ttwo\nc\tthree\n"


def test_an_empty_input_file_makes_an_empty_dataset_and_an_empty_result(c, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    tasks.load(c, str(empty), "text")
    tasks.map(c, "wordjobs.words", "text", "pairs")
    tasks.scatter(c, "pairs", "here")
    tasks.sort(c, "here", "sorted")
    tasks.reduce(c, "wordjobs.total", "sorted", "counts")
    tasks.merge(c, "counts", str(tmp_path / "out.tsv"))
    assert (tmp_path / "out.tsv").read_bytes() == b""


def test_initialize_keeps_workers_waiting_through_a_slow_generator_longer_than_dead_after(tmp_path):
    c = make_context(2, dead_after=1, progress_interval=0.2)
    tasks.setup(c)
    tasks.initialize(c, "wordjobs.slow_generate", "generated")
    tasks.merge(c, "generated", str(tmp_path / "out.tsv"))
    assert (tmp_path / "out.tsv").read_text() == "first\t1\nsecond\t2\n"


def test_a_step_costs_each_worker_its_check_and_one_command_that_also_publishes(ctx, tmp_path, caplog):
    tasks.setup(ctx)
    tasks.load(ctx, str(write_lines(tmp_path / "in.txt", ["a b", "b c", "c d"])), "text")
    caplog.set_level(logging.DEBUG, logger="reductio")
    for step, run in (("map", lambda: tasks.map(ctx, "wordjobs.words", "text", "pairs")),
                      ("send", lambda: tasks.scatter(ctx, "pairs", "here"))):
        caplog.clear()
        run()
        started = Counter(record.getMessage().split(" -m reductio.worker ")[1].split()[0]
                          for record in caplog.records if " -m reductio.worker " in record.getMessage())
        assert started == {"check": 2, step: 2}, started  # no publish command: the step's own session did it
    for home in (Path(os.environ["HOME"]) / ".reductio" / "local").iterdir():
        assert (home / "data" / "here" / "_SUCCESS").exists()


def test_text_a_worker_sends_reaches_the_terminal_with_its_control_characters_escaped(tmp_path):
    project = tmp_path / "proj"
    project.mkdir()
    (project / "noisy.py").write_text(
        "import sys\n"
        "def clear(key, value):\n"
        "    sys.stderr.write('\\x1b]0;owned\\x07 stray\\n')\n"
        "    raise ValueError('screen \\x1b[2J cleared\\r')\n"
        "    yield key, value\n")
    c = make_context(1, project=project)
    tasks.setup(c)
    tasks.load(c, str(write_lines(tmp_path / "in.txt", ["a\t1"])), "text")
    with pytest.raises(Exit) as failure:
        tasks.map(c, "noisy.clear", "text", "out")
    message = failure.value.message
    assert "screen \\x1b[2J cleared\\x0d" in message, message
    assert "\x1b" not in message and "\r" not in message and "\x07" not in message


def test_a_users_exception_in_initialize_shows_only_the_users_frames(tmp_path):
    package_root = str(Path(tasks.__file__).resolve().parent)  # reductio's own frames: its whole package
    project = tmp_path / "project"
    project.mkdir()
    (project / "raisingjobs_init.py").write_text(
        "def _divide(n):\n    return 1 / n\n\n\ndef generate(out):\n    out.write('a line')\n    _divide(0)\n")
    c = make_context(1, project=project)
    tasks.setup(c)
    with pytest.raises(Exit) as failure:
        tasks.initialize(c, "raisingjobs_init.generate", "generated")
    message = failure.value.message
    assert "raisingjobs_init.generate raised ZeroDivisionError" in message, message
    frames = re.findall(r'File "([^"]+)", line \d+, in (\S+)', message)
    assert [name for _, name in frames] == ["generate", "_divide"], message
    assert not [path for path, _ in frames if str(Path(path).resolve()).startswith(package_root)], message
