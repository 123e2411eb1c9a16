"""max_record: a line longer than it is a clear error naming where, found in bounded memory on head and workers;
long keys and long lines cannot make the output's cache, batches or a combiner hold more than their byte bounds."""

from __future__ import annotations

import filecmp
import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
from invoke import Exit

from conftest import make_context, still_running, write_lines
from reductio import tasks
from reductio.errors import ConfigError
from reductio.head.config import settings
from reductio.worker import steps
from reductio.worker.output import BATCH, REMEMBERED_KEY, PartitionedOutput

MB = 1 << 20


def long_line_file(path: Path, length: int, before: int = 3) -> Path:
    """``before`` short lines, one line of ``length`` bytes, one more short line."""
    with open(path, "w") as out:
        out.write("".join(f"short {i}\tx\n" for i in range(before)))
        out.write("k\t")
        for start in range(2, length, MB):  # in pieces: this process stays small, and so do the ones it starts
            out.write("v" * min(MB, length - start))
        out.write("\n")
        out.write("last\tline\n")
    return path


def test_max_record_is_a_byte_count_with_k_m_or_g_and_nothing_else():
    from invoke import Config

    def read(value):
        return settings(Config(overrides={"reductio": {"max_record": value}}))["max_record"]

    assert (read(1000), read("512K"), read("64M"), read("1G")) == (1000, 512 << 10, 64 << 20, 1 << 30)
    for bad in ["64MB", "-1", "0", "lots", True, "1.5M"]:
        with pytest.raises(ConfigError, match="max_record must be a number of bytes like 1000, 512K or 64M"):
            read(bad)


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gz"])
def test_load_refuses_a_line_over_max_record_naming_file_and_line(tmp_path, compressed):
    c = make_context(2, max_record=1000)
    tasks.setup(c)
    path = long_line_file(tmp_path / "in.txt", 1001, before=5000)
    if compressed:
        path = tmp_path / "in.txt.gz"
        path.write_bytes(gzip.compress((tmp_path / "in.txt").read_bytes()))
    with pytest.raises(Exit, match=rf"{path} line 5001: a line longer than max_record \(1,000 bytes\)"):
        tasks.load(c, str(path), "text")
    long_line_file(tmp_path / "fits.txt", 1000, before=5000)  # 1,000 bytes and its LF: allowed
    tasks.load(c, str(tmp_path / "fits.txt"), "text")


def test_a_map_function_yielding_a_line_over_max_record_names_its_input_line(tmp_path):
    c = make_context(2, max_record=1000)
    tasks.setup(c)
    tasks.load(c, str(long_line_file(tmp_path / "in.txt", 900)), "text")
    tasks.map(c, "wordjobs.identity", "text", "fine")  # 900 bytes fit
    with pytest.raises(Exit, match=r"in.txt line 4 \(s00000.load line 4\): wrote a line longer than max_record"
                                   r" \(1,000 bytes\), whose key starts 'k'"):
        tasks.map(c, "wordjobs.doubled", "text", "doubled")
    with pytest.raises(Exit, match="no dataset 'doubled'"):
        tasks.map(c, "wordjobs.identity", "doubled", "again")


def test_a_command_writing_an_endless_line_is_stopped_at_max_record(tmp_path):
    c = make_context(1, max_record=10_000)
    tasks.setup(c)
    tasks.load(c, str(write_lines(tmp_path / "in.txt", ["a"])), "text")
    with pytest.raises(Exit, match=r"command \"yes reductio-test-x \| tr -d .*\" wrote a line longer than max_record"
                                   r" \(10,000 bytes\) \(its output line 1\)"):
        tasks.map(c, r"| yes reductio-test-x | tr -d '\n'", "text", "endless")
    # the shell's pipeline is stopped with it: before, the step waited forever for its stderr
    assert not still_running("yes reductio-test-x", within=10)


def test_an_initialize_function_writing_a_line_over_max_record_is_refused(tmp_path):
    c = make_context(2, max_record=1000)
    tasks.setup(c)
    with pytest.raises(Exit, match=r"wordjobs.long_lines wrote a line longer than max_record \(1,000 bytes\)"):
        tasks.initialize(c, "wordjobs.long_lines", "generated")



def test_max_record_is_part_of_up_to_date_for_load_map_reduce_and_initialize(tmp_path, capsys):
    """A dataset made under one max_record is not up to date under another: it may hold longer lines."""
    steps = [("load", (str(long_line_file(tmp_path / "in.txt", 900)), "text")),
             ("initialize", ("wordjobs.long_lines", "generated")), ("map", ("wordjobs.identity", "text", "pairs")),
             ("sort", ("pairs", "sorted")), ("reduce", ("wordjobs.gather", "sorted", "gathered"))]
    c = make_context(2)
    tasks.setup(c)
    for name, args in steps:
        getattr(tasks, name)(c, *args)
    capsys.readouterr()
    for name, args in steps:
        getattr(tasks, name)(c, *args)
    assert capsys.readouterr().out.count("is up to date") == len(steps)
    limited = make_context(2, max_record=100)
    with pytest.raises(Exit, match=r"in.txt line 4: a line longer than max_record \(100 bytes\)"):
        tasks.load(limited, *steps[0][1])  # before, skipped as up to date: the dataset kept its 900-byte line
    with pytest.raises(Exit, match=r"wordjobs.long_lines wrote a line longer than max_record \(100 bytes\)"):
        tasks.initialize(limited, *steps[1][1])
    with pytest.raises(Exit, match=r"wrote a line longer than max_record \(100 bytes\)"):
        tasks.map(limited, *steps[2][1])
    tasks.sort(limited, *steps[3][1])  # sort writes the lines it reads: max_record changes nothing there
    with pytest.raises(Exit, match=r"wrote a line longer than max_record \(100 bytes\)"):
        tasks.reduce(limited, *steps[4][1])
    assert "up to date" not in capsys.readouterr().out.replace("sort: sorted is up to date", "")

PEAK = """\
import json, resource, sys
from invoke import Config, Context, Exit
from reductio import tasks

settings, project, steps = json.loads(sys.argv[1])
config = Config(overrides={"reductio": settings})
config.set_project_location(project)
c = Context(config=config)
tasks.setup(c)
error = None
try:
    for name, args in steps:
        getattr(tasks, name)(c, *args)
except Exit as exit:
    error = str(exit.message)
with open("/proc/self/status") as status:  # VmHWM: this process's own peak (ru_maxrss keeps its parent's)
    head = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(json.dumps({"error": error, "head": head // 1024,
                  "workers": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024}))
"""


def peak_megabytes(tmp_path: Path, settings: dict, steps: list) -> dict:
    """Run tasks in a Python of their own on two local workers: the error, and the peak RSS (MB) of the head and
    of the largest worker process."""
    from conftest import WORDJOBS

    done = subprocess.run([sys.executable, "-c", PEAK, json.dumps([dict(settings, local_workers=2), str(WORDJOBS),
                                                                     steps])],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_a_line_of_200_mb_is_refused_with_head_and_workers_holding_a_few_mb(tmp_path):
    path = long_line_file(tmp_path / "huge.txt", 200 * MB)
    got = peak_megabytes(tmp_path, {"max_record": "4M"}, [["load", [str(path), "text"]]])
    assert "huge.txt line 4: a line longer than max_record (4,194,304 bytes)" in got["error"]
    assert got["head"] < 100 and got["workers"] < 100, got  # readline took 635 MB on the head for 300 MB


def test_a_command_writing_200_mb_without_a_newline_is_stopped_holding_a_few_mb(tmp_path):
    script = "| head -c 200000000 /dev/zero | tr '\\\\0' x"
    got = peak_megabytes(tmp_path, {"max_record": "4M"}, [["load", [str(write_lines(tmp_path / "in.txt", ["a"])),
                                                                    "text"]],
                                                          ["map", [script, "text", "endless"]]])
    assert "wrote a line longer than max_record (4,194,304 bytes)" in got["error"], got
    assert got["workers"] < 100, got


def test_two_thousand_keys_of_50_kb_pass_through_map_in_bounded_memory(tmp_path):
    """The review's case, a fifth of its size: 10,000 such keys peaked at 1.4 GB (cache and batch counted items)."""
    with open(tmp_path / "keys.txt", "w") as out:
        for i in range(2000):
            out.write(f"{i:05d}" + "k" * 50_000 + "\t1\n")
    got = peak_megabytes(tmp_path, {}, [["load", [str(tmp_path / "keys.txt"), "text"]],
                                        ["map", ["wordjobs.identity", "text", "pairs"]]])
    assert got["error"] is None, got
    assert got["workers"] < 100, got  # 2,000 x 50 KB is 100 MB
    tasks.merge(make_context(2), "pairs", str(tmp_path / "pairs.tsv"))  # identity: every line, in key order ...
    assert filecmp.cmp(tmp_path / "pairs.tsv", tmp_path / "keys.txt", shallow=False)  # ... which keys.txt has


def test_long_keys_are_not_remembered_and_long_lines_are_written_before_8192_of_them(tmp_path):
    output = PartitionedOutput(tmp_path, 2, "w00000")
    output.route("k" * (REMEMBERED_KEY + 1))
    output.route("short")
    assert list(output.routes) == ["short"]
    lines = [f"{i}\t{'v' * 100_000}\n" for i in range(40)]  # 4 MB in 40 lines
    output.write_all(lines)
    on_disk = sum(path.stat().st_size for path in output.paths)
    assert on_disk >= len("".join(lines)) - BATCH - 100_000  # at most one batch's bytes still held
    output.close()


def test_a_combiner_runs_when_its_values_reach_held_characters_whatever_combine_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(steps, "HELD", 1_000_000)
    held_at_calls = []

    def reducer(key, values):
        values = list(values)
        held_at_calls.append(sum(len(v) for v in values))
        yield key, values[0]

    output = PartitionedOutput(tmp_path, 1, "w00000")
    records = ((str(i), "v" * 10_000) for i in range(500))  # 5 MB of values for one key
    steps.combine_into(lambda k, v: [("key", v)], "mapper", records, reducer, "reducer", 10**9, output)
    output.close()
    assert len(held_at_calls) >= 5 and max(held_at_calls) <= 1_000_000, held_at_calls


@pytest.mark.parametrize("loop", ["sum_into", "_sum_loop_into"])  # the C loop's, and PyPy's
def test_the_built_in_sum_combiner_runs_when_its_pairs_reach_held_characters(tmp_path, monkeypatch, loop):
    monkeypatch.setattr(steps, "HELD", 1_000_000)
    held_at_calls = []
    flush_sums = steps._flush_sums

    def counted(held, output):
        held_at_calls.append(sum(len(key) + len(value) for key, value in held))
        flush_sums(held, output)

    monkeypatch.setattr(steps, "_flush_sums", counted)
    output = PartitionedOutput(tmp_path, 1, "w00000")
    records = ((str(i), "1") for i in range(500))
    getattr(steps, loop)(lambda k, v: [(k + "k" * 10_000, "1")], "mapper", records, 10**9, output)
    facts = output.close()
    assert len(held_at_calls) >= 5 and max(held_at_calls) <= 1_000_000, held_at_calls
    written = (tmp_path / next(iter(facts))).read_text().splitlines()
    assert sorted(written) == sorted(f"{i}{'k' * 10_000}\t1" for i in range(500))
