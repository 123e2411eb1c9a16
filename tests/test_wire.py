"""Between head and worker: no user text can pass for reductio's own protocol lines, and no secret rides on a
command line. Real local (and SSH) workers, real user code writing what users' code writes."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import Background, make_context, write_lines
from reductio import tasks

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

# The user's code: every kind of stderr a mapper, combiner or reducer may write.
NOISY = '''\
import sys

_first = [True]


def noise():
    """Dots without a newline every call; once per process: 20 MB with no newline, bytes that are not UTF-8,
    an escape sequence, and lines that look like reductio's own, one of them left without its newline."""
    if _first[0]:
        _first[0] = False
        sys.stderr.write("x" * (20 << 20))
        sys.stderr.flush()
        sys.stderr.buffer.write(b"\\xff\\xfe\\x00\\x1b[2J")
        sys.stderr.buffer.flush()
        sys.stderr.write('\\nreductio-result: {"files": {}}\\nreductio-error: {"kind": "ReductioError", "message":'
                         ' "fake", "details": ""}\\nreductio-progress: {"done": 1, "total": 1}\\n')
        sys.stderr.write('reductio-result: {"files": {}}')
    sys.stderr.write(".")


def dots(key, value):
    sys.stderr.write(".")
    for word in key.split():
        yield word, "1"


def words(key, value):
    noise()
    for word in key.split():
        yield word, "1"


def total(key, values):
    noise()
    yield key, str(sum(int(value) for value in values))
'''

# The same noise from commands: a mapper, and a combiner or reducer over sorted lines.
NOISY_COMMAND = '''\
import sys
from itertools import groupby

err = sys.stderr.buffer
err.write(b"x" * (20 << 20) + b"\\xff\\xfe\\x00\\x1b[2J")
err.write(b'\\nreductio-result: {"files": {}}\\nreporter:status:busy\\nreductio-result: {"files": {}}')
err.flush()
if sys.argv[1] == "map":
    for line in sys.stdin:
        err.write(b".")
        for word in line.split():
            print(word + "\\t1")
else:
    rows = (line.rstrip("\\n").split("\\t", 1) for line in sys.stdin)
    for key, group in groupby(rows, lambda row: row[0]):
        err.write(b".")
        print(f"{key}\\t{sum(int(value) for _, value in group)}")
'''


@pytest.fixture
def project(tmp_path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "noisy.py").write_text(NOISY)
    (folder / "noisy_command.py").write_text(NOISY_COMMAND)
    return folder


def run_job(project: Path, steps: str, timeout: float, workers: int = 2, **settings) -> subprocess.CompletedProcess:
    """Run reductio tasks as a head process of their own, killed after ``timeout`` s (its workers then stop: their
    stdin closes), so a head that would wait forever fails the test instead of hanging it."""
    script = textwrap.dedent(f"""\
        import sys
        from pathlib import Path
        sys.path.insert(0, {str(TESTS)!r})
        from conftest import make_context
        from reductio import tasks
        c = make_context({workers}, Path({str(project)!r}), **{settings!r})
        tasks.setup(c)
        """) + textwrap.dedent(steps)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(project)]))
    try:
        return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                              timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        err = (expired.stderr or b"").decode("utf-8", "replace") if isinstance(expired.stderr, bytes) else (
            expired.stderr or "")
        pytest.fail(f"the job was still running after {timeout:g} s; its last words: {err[-600:]!r}")


def counted(path: Path) -> Counter:
    return Counter({key: int(value) for key, value in (line.split("\t") for line in path.read_text().splitlines())})


def test_a_mapper_writing_dots_without_a_newline_does_not_hang_the_head(project, tmp_path):
    """Issue 28: the result line arrived glued to the user's dots, was not recognised, and heartbeats kept the
    step alive for ever."""
    source = write_lines(tmp_path / "in.txt", ["a b", "b c", "c d"])
    out = tmp_path / "out.tsv"
    done = run_job(project, f"""\
        tasks.load(c, {str(source)!r}, "text")
        tasks.map(c, "noisy.dots", "text", "pairs")
        tasks.merge(c, "pairs", {str(out)!r})
        """, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert Counter(line.split("\t")[0] for line in out.read_text().splitlines()) == Counter("abbccd")


LINES = [f"w{i % 97} w{i % 13} the end" for i in range(60_000)]  # 1.5 MB: two shares with processes 2


@pytest.mark.parametrize("processes", [1, 2])
@pytest.mark.parametrize("kind", ["python", "command"])
def test_no_stderr_of_a_mapper_combiner_or_reducer_is_taken_for_reductios_own_lines(project, tmp_path, kind,
                                                                                   processes):
    source = write_lines(tmp_path / "in.txt", LINES * (2 if processes > 1 else 1))
    out = tmp_path / "out.tsv"
    if kind == "python":
        mapper, combiner, reducer, files = "noisy.words", "noisy.total", "noisy.total", "[]"
    else:
        mapper, combiner, reducer = ("| python3 noisy_command.py map", "| python3 noisy_command.py combine",
                                     "| python3 noisy_command.py reduce")
        files = repr([str(project / "noisy_command.py")])
    done = run_job(project, f"""\
        tasks.load(c, {str(source)!r}, "text")
        tasks.map(c, {mapper!r}, "text", "pairs", combine={combiner!r}, files={files})
        tasks.scatter(c, "pairs", "here")
        tasks.sort(c, "here", "sorted")
        tasks.reduce(c, {reducer!r}, "sorted", "counts", files={files})
        tasks.merge(c, "counts", {str(out)!r})
        """, timeout=300, processes=processes)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = Counter(word for line in source.read_text().splitlines() for word in line.split())
    assert counted(out) == expected


def command_lines() -> list:
    """Every process's command line, read from /proc as any local user may."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace"))
            except OSError:  # it ended meanwhile
                continue
    return found


def ps_as_another_account() -> str:
    """``ps -ww -eo args`` as the account ``nobody`` sees it: every command line whole (piped, ps cuts them at 80
    columns, and a long secret or step name would pass unseen). Only root can be another account: the suite run
    by another user sees them as that user, whose workers (local, and its own account over SSH) they are."""
    account = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
    done = subprocess.run([*account, "ps", "-ww", "-eo", "args"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def watch_command_lines(run: Background, secret: str, step: str, release: Path) -> tuple:
    """Until ``run`` ends: the command lines that held ``secret``, and whether a worker running ``step`` was seen
    (by /proc and by ``ps`` as another account), so a watch that saw nothing cannot pass. Once it was seen both
    ways, ``release`` is made: the step's user code waits for it, so no machine is too slow for the watch."""
    leaked, seen, seen_by_ps = [], False, False
    while run.is_alive():
        lines = command_lines()
        leaked += [line for line in lines if secret in line]
        seen = seen or any(f"reductio.worker {step}" in line for line in lines)
        listing = ps_as_another_account()
        leaked += [line for line in listing.splitlines() if secret in line]
        seen_by_ps = seen_by_ps or f"reductio.worker {step}" in listing
        if seen and seen_by_ps and not release.exists():
            release.touch()
        time.sleep(0.05)
    return leaked, seen, seen_by_ps


def waiting_for(release: Path) -> str:
    """Shell that waits until ``release`` exists, a minute at most: a command running until the test has seen it."""
    return f'i=0; until [ -e {shlex.quote(str(release))} ] || [ "$i" -ge 3000 ]; do sleep 0.02; i=$((i + 1)); done'


@pytest.mark.parametrize("processes", [1, 2])
def test_a_secret_in_a_steps_env_is_on_no_command_line_of_local_workers(tmp_path, processes):
    secret = f"s3cret-{os.urandom(8).hex()}"
    c = make_context(2, processes=processes)
    tasks.setup(c)
    tasks.load(c, str(write_lines(tmp_path / "in.txt", LINES)), "text")
    release = tmp_path / "seen"
    run = Background(lambda: tasks.map(c, f'| {waiting_for(release)}; echo "$API_TOKEN"; cat', "text", "out",
                                       env=[f"API_TOKEN={secret}"]))
    leaked, seen, seen_by_ps = watch_command_lines(run, secret, "map", release)
    assert run.error is None, run.error
    assert seen and seen_by_ps, "no worker was seen running the map"
    assert leaked == []
    tasks.merge(c, "out", str(tmp_path / "out.txt"))  # the command saw the secret in its environment
    out = (tmp_path / "out.txt").read_text().splitlines()
    assert sorted(line for line in out if line != secret) == sorted(LINES) and secret in out


def test_a_secret_in_a_steps_env_is_on_no_command_line_of_ssh_workers(ssh_workers, sshd_cluster, tmp_path):
    ssh_workers(2)
    secret = f"s3cret-{os.urandom(8).hex()}"
    c = make_context()
    tasks.setup(c)
    tasks.load(c, str(write_lines(tmp_path / "in.txt", LINES[:100])), "text")
    release = sshd_cluster.shared(tmp_path.name) / "seen"  # where the workers' account looks for it
    run = Background(lambda: tasks.map(c, f'| {waiting_for(release)}; echo "$API_TOKEN"; cat', "text", "out",
                                       env=[f"API_TOKEN={secret}"]))
    leaked, seen, seen_by_ps = watch_command_lines(run, secret, "map", release)
    assert run.error is None, run.error
    assert seen and seen_by_ps, "no worker was seen running the map"
    assert leaked == []
    tasks.merge(c, "out", str(tmp_path / "out.txt"))
    out = (tmp_path / "out.txt").read_text().splitlines()
    assert sorted(line for line in out if line != secret) == sorted(LINES[:100]) and secret in out


def test_an_mrjob_jobs_cmdenv_and_jobconf_are_on_no_command_line(tmp_path):
    secret = f"s3cret-{os.urandom(8).hex()}"
    script = tmp_path / "mr_secret.py"
    script.write_text(textwrap.dedent('''\
        import os, time
        from mrjob.job import MRJob

        class MRSecret(MRJob):
            def mapper_init(self):
                deadline = time.time() + 60  # until the test has seen the map running
                while not os.path.exists(RELEASE) and time.time() < deadline:
                    time.sleep(0.02)

            def mapper(self, _, line):
                yield os.environ["API_TOKEN"] == os.environ["SECRET_CONF"].replace("x-", "", 1), 1

        if __name__ == "__main__":
            MRSecret.run()
        ''').replace("RELEASE", repr(str(tmp_path / "seen"))))
    c = make_context(2)
    tasks.setup(c)
    source = write_lines(tmp_path / "in.txt", LINES[:100])
    command = f"{script} --cmdenv API_TOKEN={secret} --jobconf SECRET.CONF=x-{secret} {source}"
    run = Background(lambda: tasks.mrjob(c, command, output=str(tmp_path / "out")))
    leaked, seen, _ = watch_command_lines(run, secret, "map", tmp_path / "seen")
    assert run.error is None, run.error
    assert seen, "no worker was seen running the map"
    assert leaked == []
    lines = [line for part in sorted((tmp_path / "out").glob("part-*")) for line in part.read_text().splitlines()]
    assert lines == ["true\t1"] * 100


def test_an_mrjob_job_runs_a_map_task_only_where_its_input_has_lines(tmp_path):
    """Issue 28: a mapper_final counting its tasks counted one per worker, two of three holding no line."""
    script = tmp_path / "mr_tasks.py"
    script.write_text(textwrap.dedent('''\
        from mrjob.job import MRJob

        class MRTasks(MRJob):
            def mapper(self, _, line):
                yield "lines", 1

            def mapper_final(self):
                yield "map_tasks", 1

            def reducer(self, key, counts):
                yield key, sum(counts)

        if __name__ == "__main__":
            MRTasks.run()
        '''))
    c = make_context(3)
    tasks.setup(c)
    tasks.mrjob(c, f"{script} {write_lines(tmp_path / 'two.txt', ['one line', 'another'])}",
                output=str(tmp_path / "out"))
    got = dict(line.split("\t") for part in (tmp_path / "out").glob("part-*") for line in part.read_text().splitlines())
    homes = (Path(os.environ["HOME"]) / ".reductio" / "local").iterdir()
    holding = sum(1 for home in homes if any(path.stat().st_size for path in home.glob("data/mrjob.*.input/s*")))
    assert 1 <= holding < 3
    assert got == {'"lines"': "2", '"map_tasks"': str(holding)}


def test_an_mrjob_counter_name_reaches_the_terminal_with_its_escape_sequences_shown_not_run(tmp_path, capsys):
    script = tmp_path / "mr_escape.py"
    script.write_text(textwrap.dedent('''\
        from mrjob.job import MRJob

        class MREscape(MRJob):
            def mapper(self, _, line):
                self.increment_counter("g\\x1b]0;owned\\x07", "n\\x1b[2J", 1)
                yield line, 1

        if __name__ == "__main__":
            MREscape.run()
        '''))
    c = make_context(2)
    tasks.setup(c)
    capsys.readouterr()
    tasks.mrjob(c, f"{script} {write_lines(tmp_path / 'in.txt', ['a', 'b', 'c'])}", output=str(tmp_path / "out"))
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "g\\x1b]0;owned\\x07" in out and "n\\x1b[2J=3" in out
