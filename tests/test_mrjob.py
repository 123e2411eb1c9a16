"""mrjob's own bundled examples, unmodified, on reductio's workers: the same output as mrjob's ``-r local``."""

from __future__ import annotations

import importlib.util
import json
import os
import pwd
import re
import select
import shlex
import shutil
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

import mrjob.examples
import pytest
from invoke import Exit

import programs
from conftest import make_context, write_lines
from reductio import tasks

EXAMPLES = Path(mrjob.examples.__file__).parent
TEXT = [
    "The quick brown fox jumps over the lazy dog",
    "uncle hubert runs faster than the fox but slower than the dog",
    "a fox and a dog run, and run, and run until the sun is up",
    "Unusual words: ubiquitous, umbrella, UNDER, tulip",
    "",
    "the end of the quick run is the start of the next run",
] * 40

# example, its own options, how to compare (JSON-decoded lines as a multiset, unless said otherwise)
CASES = [
    ("mr_word_freq_count", []),
    ("mr_words_containing_u_freq_count", []),  # pre_filter
    ("mr_wc", []),
    ("mr_count_lines_right", []),
    ("mr_most_used_word", []),  # FILES, two steps
    ("mr_next_word_stats", []),  # SORT_VALUES, two steps
    ("mr_grep", ["-e", "fox"]),  # mapper_cmd, map only
    ("mr_log_sampler", ["--sample-size", "100000"]),  # bigger than the input: every line, in some order
    ("mr_count_lines_by_file", []),  # mapreduce_map_input_file
]


@pytest.fixture
def inputs(tmp_path):
    return [str(write_lines(tmp_path / "one.txt", TEXT)), str(write_lines(tmp_path / "two.txt", TEXT[::-1]))]


def decoded(line: str) -> str:
    """A line with its JSON key and value decoded and written canonically (dict order may differ)."""
    parts = []
    for part in line.split("\t", 1):
        try:
            parts.append(json.dumps(json.loads(part), sort_keys=True))
        except ValueError:
            parts.append(part)
    return "\t".join(parts)


def mrjob_local(example: str, args: list, inputs: list) -> Counter:
    """What mrjob's own local runner gives; the lock file its task wrapper leaves in /tmp (a path mrjob's
    bin.py writes as it is, whatever TMPDIR says) is removed."""
    before = set(Path("/tmp").glob("wrapper.lock.*"))
    done = subprocess.run([sys.executable, str(EXAMPLES / f"{example}.py"), "-r", "local", *args, *inputs],
                          capture_output=True, text=True, timeout=300)
    for lock in set(Path("/tmp").glob(f"wrapper.lock.{example}.*")) - before:
        lock.unlink(missing_ok=True)
    assert done.returncode == 0, done.stderr
    return Counter(decoded(line) for line in done.stdout.splitlines())


def reductio_run(c, example: str, args: list, inputs: list, output: Path) -> Counter:
    tasks.mrjob(c, shlex.join([str(EXAMPLES / f"{example}.py"), *args, *inputs]), output=str(output))
    return Counter(decoded(line) for part in sorted(output.glob("part-*")) for line in part.read_text().splitlines())


@pytest.mark.parametrize("example, args", CASES, ids=[case[0] for case in CASES])
def test_a_bundled_example_gives_what_mrjob_local_gives_on_local_workers(example, args, inputs, tmp_path):
    c = make_context(2)
    tasks.setup(c)
    expected = mrjob_local(example, args, inputs)
    assert expected  # the comparison means something
    assert reductio_run(c, example, args, inputs, tmp_path / "out") == expected


@pytest.mark.timeout(1200)  # every example, each a job on SSH workers: 380 s seen on a loaded machine
def test_every_example_runs_on_ssh_workers_that_have_no_mrjob_installed(ssh_workers, inputs, tmp_path):
    ssh_workers(2)
    c = make_context()
    tasks.setup(c)
    for example, args in CASES:
        assert reductio_run(c, example, args, inputs, tmp_path / example) == mrjob_local(example, args, inputs)
    wet = [str(wet_file(tmp_path / "crawl.warc.wet.gz"))]
    warcio = ["--py-files", str(zipped_modules(tmp_path / "warcio.zip", "warcio", "six"))]  # the workers have none
    assert reductio_run(c, "mr_phone_to_url", warcio, wet, tmp_path / "phones") == mrjob_local(
        "mr_phone_to_url", [], wet)
    got = reductio_run(c, "mr_count_lines_wrong", [], inputs, tmp_path / "wrong")
    assert sum(json.loads(line.split("\t")[1]) * times for line, times in got.items()) == 2 * len(TEXT)
    script, archive = lexicon_job(tmp_path / "job")
    args = ["--archives", f"{archive}#extra"]
    assert run_script(c, script, args, inputs, tmp_path / "unlisted") == script_local(script, args, inputs)


def zipped_modules(path: Path, *names: str) -> Path:
    """A zip of installed modules and packages, importable from sys.path: what mrjob's --py-files ships."""
    with zipfile.ZipFile(path, "w") as archive:
        for name in names:
            origin = Path(importlib.util.find_spec(name).origin)
            sources = sorted(origin.parent.rglob("*.py")) if origin.name == "__init__.py" else [origin]
            for source in sources:
                archive.write(source, source.relative_to(origin.parent.parent if origin.name == "__init__.py"
                                                         else origin.parent))
    return path


def test_count_lines_wrong_totals_the_lines_whatever_the_number_of_map_tasks(inputs, tmp_path):
    c = make_context(2)
    tasks.setup(c)
    got = reductio_run(c, "mr_count_lines_wrong", [], inputs, tmp_path / "out")
    assert sum(json.loads(line.split("\t")[1]) * times for line, times in got.items()) == 2 * len(TEXT)


def test_a_rerun_skips_every_step_and_rewrites_the_same_output(inputs, tmp_path, capsys):
    c = make_context(2)
    tasks.setup(c)
    first = reductio_run(c, "mr_most_used_word", [], inputs, tmp_path / "out")
    stop_words = set((EXAMPLES / "stop_words.txt").read_text().split())
    used = Counter(word for line in TEXT * len(inputs) for word in re.findall(r"[\w']+", line.lower())
                   if word not in stop_words)
    assert first == Counter({json.dumps(max((count, word) for word, count in used.items())[1]): 1})
    capsys.readouterr()
    assert reductio_run(c, "mr_most_used_word", [], inputs, tmp_path / "out") == first
    steps = [line for line in capsys.readouterr().out.splitlines() if line.startswith("reductio: ")]
    assert steps and all("up to date" in line for line in steps), steps


def test_a_failing_job_exits_with_the_users_traceback(inputs, tmp_path):
    c = make_context(2)
    tasks.setup(c)
    with pytest.raises(Exit) as failed:
        reductio_run(c, "mr_boom", [], inputs, tmp_path / "out")
    message = str(failed.value.message)
    assert "mr_boom.py --step-num=0 --mapper" in message and "exited with code 1" in message
    assert "Traceback" in message and "mapper_init" in message and "BOOM" in message


def test_the_command_line_runs_a_job_with_its_options_and_counters(inputs, tmp_path):
    script = tmp_path / "mr_counting.py"
    script.write_text(
        "from mrjob.job import MRJob\n"
        "class MRCounting(MRJob):\n"
        "    def configure_args(self):\n"
        "        super().configure_args()\n"
        "        self.add_passthru_arg('--word', default='fox')\n"
        "    def mapper(self, _, line):\n"
        "        if self.options.word in line.split():\n"
        "            self.increment_counter('matches', 'lines', 1)\n"
        "            yield self.options.word, 1\n"
        "    def reducer(self, word, counts):\n"
        "        yield word, sum(counts)\n"
        "if __name__ == '__main__':\n"
        "    MRCounting.run()\n")
    (tmp_path / "fabfile.py").write_text("from reductio.tasks import *\n")
    assert programs.reductio("-f", "fabfile.py", "setup", cwd=tmp_path).returncode == 0
    done = programs.reductio("-f", "fabfile.py", "mrjob", str(script), "--word", "dog", *inputs, "--output", "out",
                             "--cat-output", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    dogs = sum(line.split().count("dog") > 0 for line in TEXT) * 2
    assert done.stdout.splitlines()[-1] == f'"dog"\t{dogs}'
    assert f"Counters: 1\n\tmatches\n\t\tlines={dogs}" in done.stdout
    assert (tmp_path / "out" / "part-00000").exists() and (tmp_path / "out" / "part-00001").exists()


def test_the_text_classifier_reads_whole_files_through_mapper_raw_in_four_steps(tmp_path):
    c = make_context(2)
    tasks.setup(c)
    docs = [str(path) for path in sorted((EXAMPLES / "docs-to-classify").iterdir())]
    expected = mrjob_local("mr_text_classifier", [], docs)
    assert len(expected) > 100  # documents and n-gram scores
    assert reductio_run(c, "mr_text_classifier", [], docs, tmp_path / "out") == expected


# A job whose mapper reads word lists from a folder it ships (DIRS), and from an archive given with --archives.
LEXICON_JOB = """\
import os
from mrjob.job import MRJob


class MRUnlistedWords(MRJob):
    DIRS = ["lexicon"]

    def mapper_init(self):
        self.listed = set()
        for folder in ["lexicon", "extra"]:
            for where, _, names in os.walk(folder, followlinks=True):
                for name in names:
                    with open(os.path.join(where, name)) as words:
                        self.listed.update(words.read().split())

    def mapper(self, _, line):
        for word in line.lower().replace(",", " ").replace(":", " ").split():
            if word not in self.listed:
                yield word, 1

    def reducer(self, word, counts):
        yield word, sum(counts)


if __name__ == "__main__":
    MRUnlistedWords.run()
"""


def lexicon_job(folder: Path) -> tuple:
    """The job, its DIRS folder (with a subfolder) beside it, and a tar.gz for its --archives option."""
    (folder / "lexicon" / "more").mkdir(parents=True)
    (folder / "lexicon" / "stop.txt").write_text("the a and of is\n")
    (folder / "lexicon" / "more" / "animals.txt").write_text("fox dog\n")
    (folder / "mr_unlisted_words.py").write_text(LEXICON_JOB)
    write_lines(folder / "verbs.txt", ["run", "runs", "jumps"])
    archive = folder / "verbs.tar.gz"
    subprocess.run(["tar", "-czf", str(archive), "-C", str(folder), "verbs.txt"], check=True, timeout=60)
    return folder / "mr_unlisted_words.py", archive


def run_script(c, script: Path, args: list, inputs: list, output: Path) -> Counter:
    tasks.mrjob(c, shlex.join([str(script), *args, *inputs]), output=str(output))
    return Counter(decoded(line) for part in sorted(output.glob("part-*")) for line in part.read_text().splitlines())


def script_local(script: Path, args: list, inputs: list) -> Counter:
    done = subprocess.run([sys.executable, str(script), "-r", "local", *args, *inputs],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return Counter(decoded(line) for line in done.stdout.splitlines())


def test_a_jobs_dirs_and_archives_are_unpacked_in_its_tasks_working_folder(inputs, tmp_path, capsys):
    c = make_context(2)
    tasks.setup(c)
    script, archive = lexicon_job(tmp_path / "job")
    for args in [[], ["--archives", f"{archive}#extra"]]:
        expected = script_local(script, args, inputs)
        assert '"fox"' not in str(expected) and ('"run"' in str(expected)) == (not args)  # both lists were read
        assert run_script(c, script, args, inputs, tmp_path / f"out{len(args)}") == expected
    capsys.readouterr()
    run_script(c, script, [], inputs, tmp_path / "again")  # the folder archived again, to the same bytes
    steps = [line for line in capsys.readouterr().out.splitlines() if line.startswith("reductio: ")]
    assert steps and all("up to date" in line for line in steps), steps


WET_WRITER = """\
import io, sys
from warcio.warcwriter import WARCWriter

pages = [("http://pizza.example.com/menu", "Call (415) 555-1212 to order, or 1-800-555-0199."),
         ("http://pizza.example.com/", "Pizza! Phone 415.555.1212"),
         ("http://other.example.org/contact", "Reach us at 212-555-0100 any day."),
         ("http://other.example.org/about", "No numbers here.")]
with open(sys.argv[1], "wb") as out:
    writer = WARCWriter(out, gzip=True)
    for url, text in pages:
        writer.write_record(writer.create_warc_record(
            url, "conversion", payload=io.BytesIO(text.encode()), warc_content_type="text/plain"))
"""


def wet_file(path: Path) -> Path:
    """A small Common Crawl WET file (gzipped WARC conversion records), as mr_phone_to_url reads, made by warcio
    (in a process of its own: warcio leaves temporary files to the garbage collector)."""
    subprocess.run([sys.executable, "-c", WET_WRITER, str(path)], check=True, timeout=60)
    return path


def test_phone_to_url_reads_a_wet_file_whole_with_warcio(tmp_path):
    c = make_context(2)
    tasks.setup(c)
    inputs = [str(wet_file(tmp_path / "crawl.warc.wet.gz"))]
    expected = mrjob_local("mr_phone_to_url", [], inputs)
    assert len(expected) == 3  # three numbers, each with its best URL
    assert reductio_run(c, "mr_phone_to_url", [], inputs, tmp_path / "out") == expected


@pytest.mark.timeout(900)  # a venv with 3.13 on each worker, then three jobs: over 300 s on a loaded machine
def test_examples_run_on_ssh_workers_with_python_3_13_and_no_mrjob(sshd_cluster, ssh_workers, inputs, tmp_path):
    """Python 3.13 has neither pipes nor distutils, which mrjob 0.7.4 imports; the workers have no mrjob."""
    ssh_workers(2)  # the daemons' host keys in known_hosts; the workers.cfg is ours, with a 3.13 they can run:
    python = sshd_cluster.python(newest_python())
    Path("workers.cfg").write_text(sshd_cluster.workers_cfg(sshd_cluster.homes, count=2, python=python))
    c = make_context()
    tasks.setup(c)
    for example, args in [CASES[0], CASES[8]]:  # combiner; mapreduce_map_input_file
        assert reductio_run(c, example, args, inputs, tmp_path / example) == mrjob_local(example, args, inputs)
    docs = [str(path) for path in sorted((EXAMPLES / "docs-to-classify").iterdir())]
    assert reductio_run(c, "mr_text_classifier", [], docs, tmp_path / "classified") == mrjob_local(
        "mr_text_classifier", [], docs)


def newest_python() -> str:
    """Python 3.13's interpreter, which the machine must have as root (pyenv on the machines CI runs on)."""
    pyenv = Path(pwd.getpwuid(os.getuid()).pw_dir) / ".pyenv" / "versions"  # HOME is the test's own
    for candidate in [shutil.which("python3.13"), *sorted(pyenv.glob("3.13*/bin/python3.13"))]:
        if candidate and subprocess.run([candidate, "-c", "import venv"], capture_output=True,
                                        timeout=60).returncode == 0:
            return str(candidate)
    missing = "this test needs Python 3.13 with venv (pyenv install 3.13, or Debian's python3.13-venv)"
    if os.geteuid() != 0:  # a stranger's Debian 12 has none; CI runs as root, where it must be there
        pytest.skip(f"{missing}: none found for this user")
    raise AssertionError(missing)


def test_jar_and_spark_steps_are_refused_with_a_clear_message(tmp_path):
    c = make_context(2)
    tasks.setup(c)
    for example, what in [("mr_jar_step_example", "jar step"), ("mr_spark_wordcount", "spark step")]:
        with pytest.raises(Exit, match=what):
            tasks.mrjob(c, f"{EXAMPLES / example}.py {write_lines(tmp_path / 'in.txt', ['a'])}", output="out")


def test_the_task_runner_adds_nothing_to_a_tasks_stderr(tmp_path):
    """A task's stderr is its counters, status and the error shown when it fails: the runner keeps out of it."""
    script = tmp_path / "quiet.py"
    script.write_text("import mrjob.util\nprint('ran')\n")  # mrjob.util imports pipes and distutils
    done = subprocess.run([sys.executable, "-m", "reductio.mrjob_task", str(script)], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (0, "ran\n", "")


def test_a_tasks_output_is_written_in_blocks_even_under_pythonunbuffered(tmp_path):
    """mrjob writes each key and value apart: unbuffered, two system calls per pair, each waking the reader."""
    script = tmp_path / "writer.py"
    script.write_text("import sys\nsys.stdout.buffer.write(b'key\\t1\\n')\nsys.stdin.read()\n")
    task = subprocess.Popen([sys.executable, "-m", "reductio.mrjob_task", str(script)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=dict(os.environ, PYTHONUNBUFFERED="1"), cwd=tmp_path)
    try:
        readable, _, _ = select.select([task.stdout], [], [], 2)  # unbuffered, the line is there at once
        assert not readable, "the task's first line reached the pipe before its buffer was full or the task ended"
    finally:
        task.stdin.close()
    with task.stdout:
        assert task.stdout.read() == b"key\t1\n" and task.wait(60) == 0


def test_a_mapper_told_to_combine_runs_the_combiner_in_its_own_process_on_json_exact_pairs(tmp_path):
    """The map step of a job whose combiner is its own runs no sort and no combiner process: the mapper combines.
    Pairs whose JSON round trip would change them (a tuple value) reach the reducer uncombined, as mrjob allows."""
    script = tmp_path / "mr_tuples.py"
    script.write_text(
        "from mrjob.job import MRJob\n"
        "class MRTuples(MRJob):\n"
        "    def mapper(self, _, line):\n"
        "        for word in line.split():\n"
        "            yield word, 1\n"
        "            yield 'pair:' + word, (1, word)\n"
        "    def combiner(self, key, values):\n"
        "        values = list(values)\n"
        "        yield key, sum(v if isinstance(v, int) else v[0] for v in values)\n"
        "    def reducer(self, key, values):\n"
        "        yield key, sum(values)\n"
        "if __name__ == '__main__':\n"
        "    MRTuples.run()\n")

    def mapped(**env):
        done = subprocess.run([sys.executable, "-m", "reductio.mrjob_task", str(script), "--step-num=0", "--mapper"],
                              input="a b a\nb a\n", capture_output=True, text=True, timeout=60, cwd=tmp_path,
                              env=dict(os.environ, **env))
        assert done.returncode == 0, done.stderr
        return Counter(done.stdout.splitlines())

    from reductio.mrjob.task import COMBINE_IN_MAPPER

    assert mapped() == {'"a"\t1': 3, '"b"\t1': 2, '"pair:a"\t[1, "a"]': 3, '"pair:b"\t[1, "b"]': 2}
    assert mapped(**{COMBINE_IN_MAPPER: "1"}) == {'"a"\t3': 1, '"b"\t2': 1, '"pair:a"\t[1, "a"]': 3,
                                                 '"pair:b"\t[1, "b"]': 2}


def test_a_mapper_combining_runs_its_combiner_when_the_held_text_reaches_its_bound(tmp_path):
    """Values are held up to 100,000 of them or _HELD characters: long keys make the combiner run sooner."""
    script = tmp_path / "mr_long_keys.py"
    script.write_text(
        "from mrjob.job import MRJob\n"
        "class MRLongKeys(MRJob):\n"
        "    def mapper(self, _, line):\n"
        "        yield line.strip() * 100, 1\n"
        "    def combiner(self, key, values):\n"
        "        yield key, sum(values)\n"
        "    def reducer(self, key, values):\n"
        "        yield key, sum(values)\n"
        "if __name__ == '__main__':\n"
        "    MRLongKeys.run()\n")
    from reductio.mrjob.task import COMBINE_IN_MAPPER

    def mapped(held: int) -> Counter:
        run = f"import sys, reductio.mrjob.task as task; task._HELD = {held}; sys.argv[0] = task.__file__; task.main()"
        done = subprocess.run([sys.executable, "-c", run, str(script), "--step-num=0", "--mapper"],
                              input="a\nb\na\nb\n" * 5, capture_output=True, text=True, timeout=60, cwd=tmp_path,
                              env=dict(os.environ, **{COMBINE_IN_MAPPER: "1"}))
        assert done.returncode == 0, done.stderr
        return Counter(line.split("\t")[1] for line in done.stdout.splitlines())

    assert mapped(held=10**9) == {"10": 2}  # one batch: each key combined once
    assert mapped(held=150) == {"1": 20}  # two new keys of 100 characters pass the bound: every two values


def test_relative_inputs_are_named_as_mrjob_local_names_them(tmp_path):
    """mrjob -r local gives a task ``file://docs/a.txt`` for the input ``docs/a.txt``, not an absolute path."""
    Path("docs").mkdir()
    relative = [str(write_lines(Path("docs") / "a.txt", TEXT[:5]).as_posix()),
                str(write_lines(Path("docs") / "b.txt", TEXT[5:7]).as_posix())]
    c = make_context(2)
    tasks.setup(c)
    expected = mrjob_local("mr_count_lines_by_file", [], relative)
    assert any("file://docs/a.txt" in line for line in expected), expected
    assert reductio_run(c, "mr_count_lines_by_file", [], relative, tmp_path / "out") == expected


def test_a_job_leaves_nothing_in_the_heads_temp_folder_whether_it_succeeds_or_fails(inputs, tmp_path, monkeypatch):
    """mrjob's runner makes a temp folder on the head (its zip of mrjob); reductio's runs remove it."""
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where mrjob's runner makes its folder
    c = make_context(2)
    tasks.setup(c)
    assert reductio_run(c, "mr_word_freq_count", [], inputs, tmp_path / "out")
    with pytest.raises(Exit):
        reductio_run(c, "mr_boom", [], inputs, tmp_path / "boom")
    assert sorted(path.name for path in scratch.iterdir()) == []
