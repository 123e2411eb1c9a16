"""What a user sees: progress during a step, counters and tables after it, logs, report, dry runs."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from invoke import Exit

import programs
from conftest import WORDJOBS, make_context, write_lines
from oracles import count_table, merged_lines, word_counts, word_pairs
from reductio import tasks
from reductio.head.feedback import Display

REPO = Path(__file__).resolve().parent.parent


def test_the_progress_line_names_a_worker_gone_quiet_and_not_one_that_finished():
    stream = io.StringIO()
    display = Display("map", [SimpleNamespace(name=n) for n in ("busy", "quiet", "done")], 0.2, stream)
    for name in ("busy", "quiet", "done"):
        display.update(name, 1, 100)
    display.finished("done")
    deadline = time.monotonic() + 30
    while "quiet: no report for" not in stream.getvalue() and time.monotonic() < deadline:
        display.update("busy", 2, 100)
        display.update("busy", None, None)  # a heartbeat counts as a report too
        time.sleep(0.01)  # busy reports every 10 ms, well within the 0.6 s a worker may stay quiet
    display.close()
    lines = stream.getvalue().splitlines()
    assert any("quiet: no report for" in line for line in lines), lines
    assert not any("busy: no report" in line or "done: no report" in line for line in lines), lines


def test_progress_lines_appear_during_a_run_on_the_ssh_cluster(ssh_workers, tmp_path, capsys):
    ssh_workers(2)
    c = make_context(project=WORDJOBS, progress_interval=0.2)
    tasks.setup(c)
    tasks.load(c, str(write_lines(tmp_path / "in.txt", [f"k{i}\tv" for i in range(3000)])), "input")
    capsys.readouterr()
    tasks.map(c, "wordjobs.slow_identity", "input", "out")
    progress = [line for line in capsys.readouterr().err.splitlines() if line.startswith("reductio: map: ")]
    whole = [line for line in progress if "waiting for" not in line]
    assert len(whole) >= 2, progress
    assert all(" of 3000 lines (ssh-0 " in line and ", ssh-1 " in line and "lines/s" in line for line in whole)
    shares = [int(line.split("reductio: map: ")[1].split("%")[0]) for line in whole]
    assert shares == sorted(shares) and shares[0] < 100


def test_counters_add_up_to_the_true_line_counts_and_user_counters_round_trip(tmp_path, capsys):
    lines = ["alpha be", "gamma delta epsilon", "", "zeta"] * 250
    c = make_context(3, log=str(tmp_path / "job.jsonl"))
    tasks.setup(c)
    tasks.load(c, str(write_lines(tmp_path / "in.txt", lines)), "text")
    capsys.readouterr()
    tasks.map(c, "wordjobs.counted_words", "text", "pairs")
    out = capsys.readouterr().out
    words = [word for line in lines for word in line.split()]
    total = [row.split() for row in out.splitlines() if row.strip().startswith("total")][0]
    assert total[1:3] == [f"{len(lines):,}", f"{len(words):,}"]
    assert f"records: {len(lines):,}" in out
    assert f"long words: {sum(len(w) > 4 for w in words):,}" in out
    assert f"short words: {sum(len(w) <= 4 for w in words):,}" in out

    (record,) = [json.loads(line) for line in (tmp_path / "job.jsonl").read_text().splitlines()
                 if json.loads(line)["step"] == "map"]
    assert record["user"] == {"records": len(lines), "long words": sum(len(w) > 4 for w in words),
                              "short words": sum(len(w) <= 4 for w in words)}
    assert sum(w["lines in"] for w in record["workers"].values()) == len(lines)
    assert set(record["workers"]) == {"local-0", "local-1", "local-2"}
    tasks.merge(c, "pairs", str(tmp_path / "pairs.tsv"))
    assert merged_lines(tmp_path / "pairs.tsv") == word_pairs(lines)


def test_scatter_counts_the_bytes_that_crossed_to_other_workers_leaving_out_each_own_partition(tmp_path, capsys):
    c = make_context(3, log=str(tmp_path / "job.jsonl"))
    tasks.setup(c)
    lines = [f"w{i % 97} w{i % 13}" for i in range(3000)]
    tasks.load(c, str(write_lines(tmp_path / "in.txt", lines)), "text")
    tasks.map(c, "wordjobs.words", "text", "pairs")
    capsys.readouterr()
    tasks.scatter(c, "pairs", "here")
    headline = capsys.readouterr().out.splitlines()[0]
    home = Path(os.environ["HOME"]) / ".reductio" / "local"
    made = {f"local-{i}": {p.name: p.stat().st_size for p in (home / f"worker-{i}" / "data" / "pairs").glob("p*")}
            for i in range(3)}
    records = {json.loads(line)["step"]: json.loads(line) for line in (tmp_path / "job.jsonl").read_text().splitlines()}
    for i in range(3):
        counters = records["scatter"]["workers"][f"local-{i}"]
        own = sum(size for name, size in made[f"local-{i}"].items() if name.startswith(f"p{i:05d}."))
        assert counters["bytes out"] == sum(made[f"local-{i}"].values())
        assert counters["bytes crossed"] == counters["bytes out"] - own > 0
        assert counters["seconds"] >= 0 and counters["cpu seconds"] >= 0
    placed = sum(records["scatter"]["workers"][w]["bytes in"] for w in made)
    crossed = sum(records["scatter"]["workers"][w]["bytes crossed"] for w in made)
    assert headline.startswith(f"reductio: scatter: pairs -> here: {placed:,} bytes placed, {crossed:,} of them"
                               " crossing between workers (")
    tasks.merge(c, "here", str(tmp_path / "here.tsv"))
    assert merged_lines(tmp_path / "here.tsv") == word_pairs(lines)


# A step that waits and one that computes, each record costing a known amount of wall or of CPU time.
PACED = """\
import time


def waiting(key, value):
    time.sleep(0.005)
    yield key, value


def computing(key, value):
    until = time.process_time() + 0.003  # this process's own CPU time: the same however busy the machine is
    while time.process_time() < until:
        pass
    yield key, value
"""


@pytest.mark.parametrize("processes", [1, 2])
def test_cpu_seconds_tell_computing_from_waiting_and_count_a_workers_share_processes(tmp_path, processes):
    """Counted amounts, not shares of the wall clock: a loaded machine stretches the seconds, not the CPU used."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "paced.py").write_text(PACED)
    log = tmp_path / "job.jsonl"
    c = make_context(1, project=project, log=str(log), processes=processes)
    tasks.setup(c)
    lines = [f"k{i}\t" + "v" * 4000 for i in range(600)]  # 2.4 MB: two shares of at least MIN_SHARE
    tasks.load(c, str(write_lines(tmp_path / "in.txt", lines)), "input")
    tasks.map(c, "paced.waiting", "input", "waited")
    tasks.map(c, "paced.computing", "input", "computed")
    tasks.sort(c, "computed", "sorted")
    records = {json.loads(line)["target"]: json.loads(line)["workers"]["local-0"]
               for line in log.read_text().splitlines()}
    waited, computed = records["waited"], records["computed"]
    burnt = 600 * 0.003  # CPU seconds the computing step spent in its mapper, in the worker or its share processes
    assert waited["seconds"] >= 600 * 0.005 / processes  # the sleeps, shared by the processes
    assert computed["cpu seconds"] >= burnt, computed  # with 2 processes, all of it in the children
    assert waited["cpu seconds"] <= computed["cpu seconds"] - burnt / 2, (waited, computed)  # waiting is no CPU
    assert records["sorted"]["cpu seconds"] >= 0


def test_a_step_whose_input_sits_on_one_worker_warns_of_skew(tmp_path, capsys):
    c = make_context(2)
    tasks.setup(c)
    tasks.load(c, str(write_lines(tmp_path / "in.txt", [f"k{i}\tv" for i in range(12000)])), "input")
    tasks.map(c, "wordjobs.one_key", "input", "pairs")
    capsys.readouterr()
    tasks.scatter(c, "pairs", "here")
    err = capsys.readouterr().err
    assert "warning: skew in scatter" in err and "100% of the lines in" in err


def test_the_report_renders_the_steps_in_headless_chromium(tmp_path):
    log = tmp_path / "job.jsonl"
    c = make_context(2, log=str(log))
    tasks.setup(c)
    lines = ["a b c", "b c", "c"]
    tasks.load(c, str(write_lines(tmp_path / "in.txt", lines)), "text")
    tasks.map(c, "wordjobs.words", "text", "pairs")
    tasks.scatter(c, "pairs", "here")
    tasks.sort(c, "here", "sorted")
    tasks.reduce(c, "wordjobs.total", "sorted", "counts")
    tasks.merge(c, "counts", str(tmp_path / "counts.tsv"))
    assert merged_lines(tmp_path / "counts.tsv") == count_table(word_counts(lines))
    tasks.load(c, str(tmp_path / "in.txt"), "text")  # skipped: up to date
    page = tmp_path / "report.html"
    tasks.report(c, output=str(page))

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "headless Chromium is needed for this test: apt-get install chromium"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for step in ("load → text", "map → pairs", "scatter → here", "sort → sorted", "reduce → counts", "merge →"):
        assert step in dom.stdout, step
    assert dom.stdout.count('class="bar"') == 5 * 2 + 1  # five steps on two workers, merge on the head
    assert "skipped" in dom.stdout
    shot = tmp_path / "report.png"
    subprocess.run([chromium, *flags, f"--screenshot={shot}", "--window-size=900,700", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 5000


def test_each_worker_keeps_a_log_of_its_steps_with_the_error_of_a_failed_one(tmp_path):
    c = make_context(1)
    tasks.setup(c)
    tasks.load(c, str(write_lines(tmp_path / "in.txt", ["ok\t1", "boom\t2"])), "input")
    with pytest.raises(Exit):
        tasks.map(c, "wordjobs.raises_on_boom", "input", "out")
    log = (Path(os.environ["HOME"]) / ".reductio" / "local" / "worker-0" / "logs" / "steps.log").read_text()
    assert "receive done in" in log
    assert "map failed after" in log and "no booms allowed" in log


def _cli(args, home):
    return programs.reductio("-f", str(WORDJOBS / "fabfile.py"), *args, env=dict(os.environ, HOME=str(home)))


def test_dry_run_prints_each_worker_command_and_runs_nothing(tmp_path, isolated_home):
    done = _cli(["setup", "load", str(write_lines(tmp_path / "in.txt", ["a"])), "text"], isolated_home)
    assert done.returncode == 0, done.stderr
    dry = _cli(["-R", "map", "wordjobs.words", "text", "pairs"], isolated_home)
    assert dry.returncode == 0, dry.stderr
    commands = [line for line in dry.stdout.splitlines() if "-m reductio.worker map" in line]
    assert [line.split(":")[0] for line in commands] == ["local-0", "local-1"]
    assert not list((isolated_home / ".reductio" / "local").glob("*/data/pairs"))


def test_debug_shows_the_exact_worker_commands(tmp_path, isolated_home):
    done = _cli(["--debug", "setup", "load", str(write_lines(tmp_path / "in.txt", ["a"])), "text"], isolated_home)
    assert done.returncode == 0, done.stderr
    assert "-m reductio.worker receive" in done.stderr and "-m reductio.worker prepare" in done.stderr


def test_a_failing_task_exits_1_with_one_message_and_no_traceback(isolated_home):
    done = _cli(["setup", "map", "wordjobs.words", "missing", "pairs"], isolated_home)
    assert done.returncode == 1
    assert "no dataset 'missing'" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_misspelled_setting_stops_the_task_before_it_runs_with_one_message(tmp_path, isolated_home):
    config = tmp_path / "reductio.yaml"
    config.write_text("reductio:\n  combine_limt: 5\n")
    done = _cli(["--config", str(config), "setup"], isolated_home)
    assert done.returncode == 1
    assert "unknown reductio setting(s) combine_limt; known: combine_limit" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (isolated_home / ".reductio").exists()


def test_a_new_job_log_is_readable_by_its_owner_only_and_an_existing_one_keeps_its_mode(tmp_path):
    new, shared = tmp_path / "new.jsonl", tmp_path / "shared.jsonl"
    shared.write_text("")
    shared.chmod(0o644)
    old_umask = os.umask(0o022)
    try:
        for log in (new, shared):
            c = make_context(1, log=str(log))
            tasks.setup(c)
            tasks.load(c, str(write_lines(tmp_path / "in.txt", ["a"])), "text", force=True)
    finally:
        os.umask(old_umask)
    assert new.stat().st_mode & 0o777 == 0o600 and shared.stat().st_mode & 0o777 == 0o644
    assert all(json.loads(line)["step"] == "load" for line in new.read_text().splitlines())


def test_a_job_log_that_cannot_be_written_says_so_and_keeps_the_finished_step(tmp_path, capsys):
    folder = tmp_path / "a-folder"
    folder.mkdir()
    c = make_context(1, log=str(folder))  # a folder, not a file: the folder check passes, the write fails
    tasks.setup(c)
    with pytest.raises(Exit) as failure:
        tasks.load(c, str(write_lines(tmp_path / "in.txt", ["a b"])), "text")
    assert f"cannot write the job log {folder}: Is a directory; the load step itself finished" in failure.value.message
    capsys.readouterr()
    tasks.status(make_context(1))
    assert " text " in capsys.readouterr().out
