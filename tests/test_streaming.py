"""Commands as mapper, reducer and combiner (the Hadoop Streaming contract), on real local workers."""

from __future__ import annotations

import gzip
import hashlib
import os
import secrets
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
from invoke import Exit

import programs
from conftest import Background, make_context, still_running, write_lines
from oracles import merged_lines, word_pairs
from reductio import tasks

WORDS = ["the cat sat", "on the mat", "the end", "ünïcode wörds the"] * 250

# A word-count mapper and reducer as a Hadoop Streaming user writes them: plain scripts on stdin/stdout.
MAPPER = """\
import sys
for line in sys.stdin:
    for word in line.split():
        print(word + "\\t1")
    sys.stderr.write("reporter:counter:words,lines,1\\n")
sys.stderr.write("reporter:status:mapped\\n")
"""
REDUCER = """\
import sys
from itertools import groupby
rows = (line.rstrip("\\n").split("\\t", 1) for line in sys.stdin)
for key, group in groupby(rows, lambda row: row[0]):
    print(f"{key}\\t{sum(int(value) for _, value in group)}")
"""


def homes():
    return sorted((Path(os.environ["HOME"]) / ".reductio" / "local").iterdir())


@pytest.fixture
def c():
    context = make_context(2)
    tasks.setup(context)
    return context


@pytest.fixture
def scripts(tmp_path):
    (tmp_path / "mapper.py").write_text(MAPPER)
    (tmp_path / "reducer.py").write_text(REDUCER)
    return [str(tmp_path / "mapper.py"), str(tmp_path / "reducer.py")]


def counts(path: Path) -> dict:
    return {key: int(value) for key, value in (line.split("\t") for line in path.read_text().splitlines())}


def expected_counts() -> dict:
    return dict(Counter(word for line in WORDS for word in line.split()))


def word_count(c, tmp_path, scripts, combine="", **options) -> dict:
    tasks.load(c, str(write_lines(tmp_path / "in.txt", WORDS)), "text")
    tasks.map(c, "| python3 mapper.py", "text", "pairs", combine=combine, files=scripts, **options)
    tasks.scatter(c, "pairs", "here")
    tasks.sort(c, "here", "sorted")
    tasks.reduce(c, "| python3 reducer.py", "sorted", "counts", files=scripts)
    tasks.merge(c, "counts", str(tmp_path / "counts.tsv"))
    return counts(tmp_path / "counts.tsv")


def test_a_mapper_and_reducer_command_count_words_with_their_counters(c, tmp_path, scripts, capsys):
    assert word_count(c, tmp_path, scripts) == expected_counts()
    out = capsys.readouterr().out
    assert f"words,lines: {len(WORDS):,}" in out  # reporter:counter lines summed over both workers


def test_a_combiner_command_reads_the_mappers_output_sorted(c, tmp_path, scripts, capsys):
    assert word_count(c, tmp_path, scripts, combine="| python3 reducer.py") == expected_counts()
    map_table = capsys.readouterr().out.split("map: ")[1].split("scatter: ")[0]
    total_out = int(map_table.split("total")[1].split()[1].replace(",", ""))
    assert total_out <= 2 * len(expected_counts())  # one line per word and worker, not one per word


def test_a_python_combiner_pre_aggregates_a_commands_output(c, tmp_path, scripts):
    assert word_count(c, tmp_path, scripts, combine="reductio.reducers.sum") == expected_counts()


def test_a_line_without_a_tab_is_all_key_and_kept_as_written(c, tmp_path):
    tasks.load(c, str(write_lines(tmp_path / "in.txt", [f"w{i}" for i in range(100)])), "text")
    tasks.map(c, "| tr a-z A-Z", "text", "upper")
    tasks.merge(c, "upper", str(tmp_path / "upper.txt"))
    assert sorted((tmp_path / "upper.txt").read_text().splitlines()) == sorted(f"W{i}" for i in range(100))
    for home in homes():  # partitioned by the whole line: each line sits in its key's partition
        for part in (home / "data" / "upper").glob("p*"):
            from reductio.wire.partition import partition_of
            assert {partition_of(line, 2) for line in part.read_text().splitlines()} <= {int(part.name[1:6])}


def test_a_map_only_job_sets_the_environment_and_finds_its_files(c, tmp_path):
    (tmp_path / "suffix.txt").write_text("!\n")
    tasks.load(c, str(write_lines(tmp_path / "in.txt", ["a", "b", "c"])), "text")
    tasks.map(c, '| while read w; do printf "%s\\t%s%s\\n" "$w" "$GREETING" "$(cat suffix.txt)"; done',
              "text", "greeted", files=[str(tmp_path / "suffix.txt")], env=["GREETING=hello"])
    tasks.merge(c, "greeted", str(tmp_path / "out.tsv"))
    assert sorted((tmp_path / "out.tsv").read_text().splitlines()) == [f"{w}\thello!" for w in "abc"]


def test_a_command_runs_with_the_workers_python_first_on_path(c, tmp_path):
    tasks.load(c, str(write_lines(tmp_path / "in.txt", ["x"] * 10)), "text")
    tasks.map(c, '| python3 -c "import sys; sys.stdin.read(); print(sys.executable)"', "text", "pythons")
    tasks.merge(c, "pythons", str(tmp_path / "out.txt"))
    found = set((tmp_path / "out.txt").read_text().split())
    assert found and all(os.path.dirname(p) == os.path.dirname(sys.executable) for p in found)


def test_a_failing_command_names_worker_command_exit_code_and_stderr(c, tmp_path):
    tasks.load(c, str(write_lines(tmp_path / "in.txt", WORDS)), "text")
    with pytest.raises(Exit) as failed:
        tasks.map(c, "| echo first >&2; echo 'it broke' >&2; exit 3", "text", "pairs")
    message = str(failed.value.message)
    assert "local-0" in message and "local-1" in message
    assert "command \"echo first >&2; echo 'it broke' >&2; exit 3\" exited with code 3: it broke" in message
    assert "first" in message  # the stderr tail is in the details
    assert not any((home / "data" / "pairs").exists() for home in homes())
    assert not any(list((home / "tmp").iterdir()) for home in homes())


def test_a_python_traceback_longer_than_the_lines_kept_keeps_its_header(c, tmp_path):
    tasks.load(c, str(write_lines(tmp_path / "in.txt", WORDS)), "text")
    frames = "".join(f"  File x.py, line {i}, in f{i}\\n    ^^^^\\n" for i in range(30))  # as 3.13 marks them
    with pytest.raises(Exit) as failed:
        tasks.map(c, f"| cat >/dev/null; printf 'early\\nTraceback (most recent call last):\\n{frames}"
                     f"ValueError: BOOM\\n' >&2; exit 1", "text", "pairs")
    message = str(failed.value.message)
    assert "exited with code 1: ValueError: BOOM" in message, message
    details = message[message.index("\n") + 1:]
    assert "Traceback (most recent call last):\n  ... (41 more lines)\n" in details, details
    assert "\nearly\n" not in details and "in f29\n    ^^^^\nValueError: BOOM" in details


def test_a_command_that_is_not_found_is_one_clear_line(c, tmp_path):
    tasks.load(c, str(write_lines(tmp_path / "in.txt", WORDS)), "text")
    with pytest.raises(Exit) as failed:
        tasks.map(c, "| no-such-mapper --fast", "text", "pairs")
    first = str(failed.value.message).splitlines()[1]
    assert "command 'no-such-mapper --fast': not found" in first and "exit" not in first


def test_a_command_that_stops_reading_early_and_exits_zero_is_fine(c, tmp_path):
    lines = [f"line {i} " + "x" * 100 for i in range(50_000)]
    tasks.load(c, str(write_lines(tmp_path / "in.txt", lines)), "text")
    tasks.map(c, "| head -n 1", "text", "firsts")
    tasks.merge(c, "firsts", str(tmp_path / "out.txt"))
    assert len((tmp_path / "out.txt").read_text().splitlines()) == 2  # one per worker
    firsts = merged_lines(tmp_path / "out.txt")
    assert set(firsts) <= set(lines) and max(firsts.values()) == 1  # two lines of the input, each worker's own


def test_output_that_is_not_utf8_is_refused(c, tmp_path):
    tasks.load(c, str(write_lines(tmp_path / "in.txt", ["a"])), "text")
    with pytest.raises(Exit, match="not UTF-8"):
        tasks.map(c, "| cat >/dev/null; printf 'ok\\n\\377\\n'", "text", "bad")


def test_a_step_stopped_while_a_pipeline_runs_stops_every_process_of_it(c, tmp_path):
    """The shell's pipeline outlives the shell, holding the stderr the step waits for: it must be stopped too."""
    tasks.load(c, str(write_lines(tmp_path / "in.txt", ["a"])), "text")
    sleep = f"sleep 300.{secrets.randbelow(10**9):09d}"  # this test's own: no other process of the run is found
    run = Background(lambda: tasks.map(c, f"| printf '\\377\\n'; {sleep} | cat", "text", "bad"))
    run.join(timeout=60)
    assert not run.is_alive(), "the map step was still waiting for its command's pipeline after 60 s"
    assert isinstance(run.error, Exit) and "not UTF-8" in run.error.message
    assert not still_running(sleep, within=10), "a process of the pipeline outlived the step by 10 s"


def test_a_reducer_command_refuses_unsorted_input(c, tmp_path, scripts):
    tasks.load(c, str(write_lines(tmp_path / "in.txt", WORDS)), "text")
    tasks.map(c, "| python3 mapper.py", "text", "pairs", files=scripts)
    with pytest.raises(Exit, match="is not sorted"):
        tasks.reduce(c, "| python3 reducer.py", "pairs", "counts", files=scripts)


def test_a_step_is_redone_when_a_shipped_file_changes_and_skipped_when_not(c, tmp_path, scripts, capsys):
    word_count(c, tmp_path, scripts)
    capsys.readouterr()
    tasks.map(c, "| python3 mapper.py", "text", "pairs", files=scripts)
    assert "map: pairs is up to date" in capsys.readouterr().out
    Path(scripts[0]).write_text(MAPPER.replace('"\\t1"', '"\\t2"'))
    tasks.map(c, "| python3 mapper.py", "text", "pairs", files=scripts)
    assert "up to date" not in capsys.readouterr().out
    tasks.merge(c, "pairs", str(tmp_path / "pairs.tsv"))
    assert set(line.split("\t")[1] for line in (tmp_path / "pairs.tsv").read_text().splitlines()) == {"2"}
    assert merged_lines(tmp_path / "pairs.tsv") == Counter(f"{word}\t2" for line in WORDS for word in line.split())


def test_several_processes_per_worker_give_the_same_counts(tmp_path, scripts):
    c = make_context(2, processes=3)
    tasks.setup(c)
    lines = [f"word{i % 5000} other{i % 7}" for i in range(300_000)]  # MIN_SHARE thrice per worker: 3 shares
    tasks.load(c, str(write_lines(tmp_path / "in.txt", lines)), "text")
    tasks.map(c, "| python3 mapper.py", "text", "pairs", files=scripts)
    assert len({p.name.split(".")[1] for h in homes() for p in (h / "data" / "pairs").glob("p*")}) > 2
    tasks.scatter(c, "pairs", "here")
    tasks.sort(c, "here", "sorted")
    tasks.reduce(c, "| python3 reducer.py", "sorted", "counts", files=scripts)
    tasks.merge(c, "counts", str(tmp_path / "counts.tsv"))
    assert counts(tmp_path / "counts.tsv") == dict(Counter(w for line in lines for w in line.split()))


def test_files_and_env_are_refused_with_a_python_function(c, tmp_path):
    tasks.load(c, str(write_lines(tmp_path / "in.txt", ["a"])), "text")
    with pytest.raises(Exit, match="files, archives and env are for a command"):
        tasks.map(c, "wordjobs.identity", "text", "out", env=["A=1"])
    with pytest.raises(Exit, match="bad environment setting"):
        tasks.map(c, "| cat", "text", "out", env=["not a setting"])


def test_the_command_line_takes_a_command_files_and_env(tmp_path, scripts):
    fabfile = tmp_path / "fabfile.py"
    fabfile.write_text(textwrap.dedent("""\
        from reductio.tasks import *
    """))
    write_lines(tmp_path / "in.txt", WORDS)
    run = lambda *argv: programs.reductio("-f", str(fabfile), *argv, cwd=tmp_path)  # noqa: E731
    assert run("setup").returncode == 0
    assert run("load", "in.txt", "text").returncode == 0
    done = run("map", "| python3 mapper.py", "text", "pairs", "--files", scripts[0], "--env", "X=1")
    assert done.returncode == 0, done.stderr
    assert "words,lines: 1,000" in done.stdout
    merged = run("merge", "pairs", "pairs.tsv")
    assert merged.returncode == 0, merged.stderr
    assert merged_lines(tmp_path / "pairs.tsv") == word_pairs(WORDS)


def test_reporter_status_shows_in_the_progress_line(tmp_path, capsys):
    c = make_context(2, progress_interval=0.2)
    tasks.setup(c)
    numbers = [str(i) for i in range(40)]
    tasks.load(c, str(write_lines(tmp_path / "in.txt", numbers)), "text")
    capsys.readouterr()
    tasks.map(c, '| while read n; do echo "reporter:status:at line $n" >&2; echo "$n"; sleep 0.05; done',
              "text", "out")
    progress = [line for line in capsys.readouterr().err.splitlines() if line.startswith("reductio: map: ")]
    assert any("local-0 " in line and "% (at line " in line for line in progress), progress
    tasks.merge(c, "out", str(tmp_path / "out.txt"))
    assert merged_lines(tmp_path / "out.txt") == Counter(numbers)


def test_commands_and_their_files_run_on_ssh_workers_next_to_a_local_one(ssh_workers, tmp_path, scripts, capsys):
    ssh_workers(2, local=1)
    c = make_context()
    tasks.setup(c)
    assert word_count(c, tmp_path, scripts, combine="| python3 reducer.py") == expected_counts()
    capsys.readouterr()
    tasks.map(c, "| python3 mapper.py", "text", "pairs", combine="| python3 reducer.py", files=scripts)
    assert "map: pairs is up to date" in capsys.readouterr().out  # shipped already, same code: skipped


def test_a_map_command_runs_once_per_input_file_named_in_mapreduce_map_input_file(c, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    write_lines(inputs / "a.txt", ["x"] * 300)
    write_lines(inputs / "b.txt", ["y"] * 500)
    tasks.load(c, str(inputs), "text")
    # each run says which file it reads and how many lines it got, and that its variables agree
    tasks.map(c, '| echo "$mapreduce_map_input_file\t$(wc -l) $map_input_file"', "text", "runs")
    tasks.merge(c, "runs", str(tmp_path / "runs.tsv"))
    runs = [line.split("\t") for line in (tmp_path / "runs.tsv").read_text().splitlines()]
    per_file = Counter()
    for name, rest in runs:
        lines, same = rest.split(" ")
        assert same == name
        per_file[name] += int(lines)
    assert per_file == {f"file://{inputs / 'a.txt'}": 300, f"file://{inputs / 'b.txt'}": 500}
    assert len(runs) <= 4  # one run per input file a worker holds lines of, not per block


def test_whole_files_reach_one_command_run_each_by_name_unchanged(c, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    crlf = b"WARC/1.0\r\nline two\r\n\xff not utf-8, no final newline"
    (inputs / "one.bin").write_bytes(crlf)
    (inputs / "two.txt.gz").write_bytes(gzip.compress(b"decompressed\n"))
    (inputs / "three.txt").write_bytes(b"")
    tasks.load(c, str(inputs), "files", whole=True)
    (tmp_path / "seen.py").write_text(
        "import hashlib, sys\n"
        "path, name = sys.argv[1:]\n"
        "print(name, hashlib.sha256(open(path, 'rb').read()).hexdigest(), sys.stdin.read(), sep='\\t')\n")
    tasks.map(c, "| python3 seen.py", "files", "seen", files=[str(tmp_path / "seen.py")])
    tasks.merge(c, "seen", str(tmp_path / "seen.tsv"))
    seen = sorted(line.split("\t") for line in (tmp_path / "seen.tsv").read_text().splitlines())

    assert seen == sorted([
        [str(inputs / "one.bin"), hashlib.sha256(crlf).hexdigest(), ""],
        [str(inputs / "three.txt"), hashlib.sha256(b"").hexdigest(), ""],
        [str(inputs / "two.txt.gz"), hashlib.sha256(b"decompressed\n").hexdigest(), ""],
    ])


def test_whole_files_are_refused_by_every_step_but_a_map_command(c, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    write_lines(inputs / "a.txt", ["a\tb"])
    tasks.load(c, str(inputs), "files", whole=True)
    for step in (lambda: tasks.map(c, "wordjobs.words", "files", "out"),
                 lambda: tasks.sort(c, "files", "out"),
                 lambda: tasks.reduce(c, "wordjobs.total", "files", "out")):
        with pytest.raises(Exit, match="holds whole files"):
            step()


def test_a_worker_that_got_no_lines_sorts_reduces_and_merges_nothing_without_waiting(c, tmp_path):
    tasks.load(c, str(write_lines(tmp_path / "one.txt", ["only\tline"])), "one")  # one block: one worker
    assert sum(1 for home in homes() if list((home / "data" / "one").glob("s*"))) == 1
    tasks.sort(c, "one", "sorted")
    tasks.reduce(c, "| cat", "sorted", "reduced")
    tasks.merge(c, "reduced", str(tmp_path / "out.tsv"))
    assert (tmp_path / "out.tsv").read_text() == "only\tline\n"


def test_a_combiner_command_that_stops_reading_early_and_exits_zero_is_fine(c, tmp_path):
    """Issue 28: ``sort`` before the combiner was killed by SIGPIPE when ``head -1`` stopped reading, and that
    failed the step; a stage that stops reading and exits 0 is fine, as for the mapper."""
    lines = [f"line {i:06d} " + "x" * 100 for i in range(50_000)]  # sort's output far above a pipe's 64 KB
    tasks.load(c, str(write_lines(tmp_path / "in.txt", lines)), "text")
    tasks.map(c, "| cat", "text", "firsts", combine="| head -1")
    tasks.merge(c, "firsts", str(tmp_path / "out.txt"))
    firsts = (tmp_path / "out.txt").read_text().splitlines()
    assert len(firsts) == 2 and set(firsts) <= set(lines)  # the first sorted line of each worker


def test_a_combiner_command_that_stops_reading_and_fails_still_fails_the_step(c, tmp_path):
    lines = [f"line {i:06d} " + "x" * 100 for i in range(50_000)]
    tasks.load(c, str(write_lines(tmp_path / "in.txt", lines)), "text")
    with pytest.raises(Exit, match="command 'head -1; exit 4' exited with code 4"):
        tasks.map(c, "| cat", "text", "firsts", combine="| head -1; exit 4")


def test_a_map_command_runs_on_no_worker_that_holds_no_lines_of_the_input(tmp_path):
    """Issue 28: with one line on three workers, the two that got nothing ran the command too."""
    c = make_context(3)
    tasks.setup(c)
    tasks.load(c, str(write_lines(tmp_path / "one.txt", ["only line"])), "text")
    assert sum(1 for home in homes() if any((home / "data" / "text").glob("s*"))) == 1
    tasks.map(c, '| echo "ran $mapreduce_map_input_file"; cat', "text", "runs")
    tasks.merge(c, "runs", str(tmp_path / "runs.txt"))
    runs = (tmp_path / "runs.txt").read_text().splitlines()
    assert sorted(runs) == sorted(["only line", f"ran file://{tmp_path / 'one.txt'}"])


def test_a_map_command_over_a_steps_output_runs_on_no_worker_that_holds_none_of_it(tmp_path):
    c = make_context(3)
    tasks.setup(c)
    tasks.load(c, str(write_lines(tmp_path / "one.txt", ["k\tv"])), "one")
    tasks.map(c, "| cat", "one", "mapped")  # not made by load: no input file named
    tasks.map(c, "| echo ran; cat", "mapped", "runs")
    tasks.merge(c, "runs", str(tmp_path / "runs.txt"))
    assert sorted((tmp_path / "runs.txt").read_text().splitlines()) == ["k\tv", "ran"]


def test_counter_names_reach_the_terminal_with_their_escape_sequences_shown_not_run(c, tmp_path, capsys):
    tasks.load(c, str(write_lines(tmp_path / "in.txt", ["a", "b"])), "text")
    capsys.readouterr()
    tasks.map(c, "| printf 'reporter:counter:g\\033]0;owned\\007,n\\033[2J,3\\n' >&2; cat", "text", "out")
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "g\\x1b]0;owned\\x07,n\\x1b[2J: " in out
