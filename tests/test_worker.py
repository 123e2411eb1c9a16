"""The worker entry point, run as the head runs it: ``python -m reductio.worker STEP``, its parameters on stdin."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import stat
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from reductio.errors import DatasetError
from reductio.wire import framing
from reductio.wire.partition import partition_of
from reductio.wire.protocol import params_frame
from reductio.wire.sorting import sort_key
from reductio.worker.store import MARKER, STALE_AFTER, Home, file_facts

REPO = Path(__file__).resolve().parent.parent

WORDJOBS = Path(__file__).parent / "_support" / "wordjobs"
TOKEN = "0123456789abcdef0123456789abcdef"  # the head's, passed in the parameters
RESULT = f"{TOKEN} reductio-result: "
ERROR = f"{TOKEN} reductio-error: "


class Reply:
    """What one worker command did: exit code, stdout bytes, and its protocol lines on stderr."""

    def __init__(self, done: subprocess.CompletedProcess) -> None:
        self.code = done.returncode
        self.stdout = done.stdout
        self.stderr = done.stderr.decode("utf-8", "replace")
        lines = self.stderr.splitlines()
        self.results = [json.loads(line[len(RESULT):]) for line in lines if line.startswith(RESULT)]
        self.errors = [json.loads(line[len(ERROR):]) for line in lines if line.startswith(ERROR)]

    @property
    def result(self) -> dict:
        assert self.code == 0, self.stderr
        assert self.errors == [], self.stderr
        assert len(self.results) == 1, self.stderr
        return self.results[0]

    @property
    def error(self) -> dict:
        assert self.code == 1, self.stderr
        assert self.results == [], self.stderr
        assert len(self.errors) == 1, self.stderr
        return self.errors[0]


def run_worker(step: str, params: dict, stdin: bytes = b"", **env) -> Reply:
    environment = dict(os.environ, **env)
    paths = [str(WORDJOBS)] + ([environment["PYTHONPATH"]] if environment.get("PYTHONPATH") else [])
    environment["PYTHONPATH"] = os.pathsep.join(paths)
    done = subprocess.run(
        [sys.executable, "-m", "reductio.worker", step],
        input=params_frame(dict(params, token=TOKEN)) + stdin, capture_output=True, env=environment, timeout=60,
    )
    return Reply(done)


@pytest.fixture
def home(tmp_path) -> Home:
    home = Home(tmp_path / "worker-home")
    home.prepare()
    return home


def publish_source(home: Home, name: str, files: dict, fmt: str, attempt: str = None) -> dict:
    """Publish ``files`` (file name -> list of lines, or bytes) as dataset ``name`` by hand."""
    attempt = attempt or f"src-{name.replace('.', '-').replace('_', '-')}"
    folder = home.tmp / attempt  # not attempt_dir: its lock would hold the version for the rest of this test
    folder.mkdir(mode=0o700, exist_ok=True)
    facts = {}
    for file_name, content in files.items():
        data = content if isinstance(content, bytes) else "".join(line + "\n" for line in content).encode("utf-8")
        (folder / file_name).write_bytes(data)
        facts[file_name] = file_facts(folder / file_name)
    return home.publish(attempt, name, facts, {"step": "load", "format": fmt, "partitions": len(files)})


def lines_of(path: Path):
    return path.read_bytes().decode("utf-8").split("\n")[:-1]


def dataset_lines(home: Home, name: str):
    return [line for path in home.files(name) for line in lines_of(path)]


def run_and_publish(home: Home, step: str, params: dict, attempt: str, target: str, facts: dict) -> dict:
    """Run a step into ``attempt``, then publish it with the publish step, as the head does."""
    result = run_worker(step, dict(params, home=str(home.root), attempt=attempt)).result
    published = run_worker("publish", {
        "home": str(home.root), "attempt": attempt, "target": target,
        "files": result["files"], "facts": facts,
    }).result
    assert published["published"] == target
    return result


TEXT = {
    "part-0": ["the quick brown fox", "jumps over the lazy dog", "", "\u00fcber the caf\u00e9"],
    "part-1": ["the dog sleeps", "fox\tand\ttabs", "caf\u00e9 caf\u00e9 \U0001f600"],
}


def test_prepare_creates_the_home_private_and_reports_cpus_and_python(tmp_path):
    root = tmp_path / "fresh" / "home"
    reply = run_worker("prepare", {"home": str(root)})
    assert reply.result == {"cpus": os.cpu_count(), "python": platform.python_version()}
    assert reply.stdout == b""
    for folder in (root, root / "data", root / "store", root / "tmp"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


def test_map_into_an_attempt_then_publish_makes_a_records_dataset(home):
    source = publish_source(home, "text", TEXT, "text")
    reply = run_worker("map", {
        "home": str(home.root), "source": "text", "function": "wordjobs.words",
        "attempt": "m1", "partitions": 3, "origin": "w0",
    })
    result = reply.result
    assert reply.stdout == b""
    assert sorted(result["files"]) == ["p00000.w0", "p00001.w0", "p00002.w0"]
    assert result["counters"]["lines in"] == sum(len(lines) for lines in TEXT.values())
    assert result["counters"]["lines out"] == sum(facts["lines"] for facts in result["files"].values())
    assert result["source"] == {"attempt": source["attempt"], "format": "text", "partitions": 2}
    for name, facts in result["files"].items():
        path = home.tmp / "m1" / name
        assert facts["bytes"] == path.stat().st_size
        assert facts["lines"] == len(lines_of(path))
        assert facts["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()

    abandoned, recent, unlinked = home.tmp / "abandoned", home.tmp / "another-jobs", home.store / "unlinked"
    for folder in (abandoned, recent, unlinked):
        folder.mkdir()
    long_ago = time.time() - STALE_AFTER - 60
    os.utime(abandoned, (long_ago, long_ago))
    published = run_worker("publish", {
        "home": str(home.root), "attempt": "m1", "target": "ones",
        "files": result["files"], "facts": {"step": "map", "format": "records", "partitions": 3},
    }).result
    assert published["published"] == "ones"
    assert sorted(published["cleaned"]) == ["abandoned", "unlinked"]  # what crashed steps left; not a running one's
    assert recent.is_dir() and not abandoned.exists() and not unlinked.exists()
    marker = home.marker("ones")
    assert marker["files"] == result["files"]
    assert (marker["format"], marker["attempt"]) == ("records", "m1")
    assert not (home.tmp / "m1").exists()

    expected = Counter()
    for line in (line for lines in TEXT.values() for line in lines):
        key, _, value = line.partition("\t")
        expected.update((value or key).split())
    got = Counter()
    for path in home.files("ones"):
        p = int(path.name[1:6])
        for line in lines_of(path):
            key, value = line.split("\t")
            assert value == "1"
            assert partition_of(key, 3) == p
            got[key] += 1
    assert got == expected


def test_a_mapper_raising_on_line_2_reports_file_line_and_its_own_message(home):
    publish_source(home, "pairs", {"p00000.src": ["fine\t1", "boom\t2", "never\t3"]}, "records")
    reply = run_worker("map", {
        "home": str(home.root), "source": "pairs", "function": "wordjobs.raises_on_boom",
        "attempt": "m1", "partitions": 1, "origin": "w0",
    })
    error = reply.error
    assert error["kind"] == "UserCodeError"
    assert error["message"].startswith("p00000.src line 2: ")
    assert "wordjobs.raises_on_boom raised ValueError: no booms allowed" in error["message"]
    assert "no booms allowed" in error["details"]
    assert "in raises_on_boom" in error["details"]
    assert "reductio" + os.sep + "steps.py" not in error["details"]
    assert home.datasets() == ["pairs"]


def test_a_record_without_tab_in_a_records_dataset_is_an_error_naming_file_and_line(home):
    publish_source(home, "pairs", {"p00000.src": ["a\t1", "b\t2", "no tab here", "c\t3"]}, "records")
    reply = run_worker("map", {
        "home": str(home.root), "source": "pairs", "function": "wordjobs.identity",
        "attempt": "m1", "partitions": 1, "origin": "w0",
    })
    error = reply.error
    assert error["kind"] == "InputError"
    assert error["message"].startswith("p00000.src line 3: no tab in record")
    assert "'no tab here'" in error["message"]


def test_a_line_without_tab_in_a_text_dataset_is_a_key_with_an_empty_value(home):
    publish_source(home, "text", {"part-0": ["a\t1", "no tab here", "b\tx\ty"]}, "text")
    result = run_worker("map", {
        "home": str(home.root), "source": "text", "function": "wordjobs.identity",
        "attempt": "m1", "partitions": 1, "origin": "w0",
    }).result
    assert list(result["files"]) == ["p00000.w0"]
    assert lines_of(home.tmp / "m1" / "p00000.w0") == ["a\t1", "no tab here\t", "b\tx\ty"]


def test_invalid_utf8_in_a_source_is_an_input_error_with_its_byte_offset(home):
    data = b"ok\tfine\nbad\t\xfe\xff\n"
    publish_source(home, "raw", {"part-0": data}, "text")
    error = run_worker("map", {
        "home": str(home.root), "source": "raw", "function": "wordjobs.identity",
        "attempt": "m1", "partitions": 1, "origin": "w0",
    }).error
    assert error["kind"] == "InputError"
    offset = data.index(b"\xfe")
    assert error["message"] == f"part-0 line 2: invalid UTF-8 at byte offset {offset}"


def test_a_step_on_a_missing_source_is_a_dataset_error(home):
    error = run_worker("map", {
        "home": str(home.root), "source": "nope", "function": "wordjobs.identity",
        "attempt": "m1", "partitions": 1, "origin": "w0",
    }).error
    assert error == {"kind": "DatasetError", "message": "no dataset 'nope'", "details": ""}


def test_a_function_that_does_not_load_is_a_user_code_error(home):
    publish_source(home, "pairs", {"p00000.src": ["a\t1"]}, "records")
    error = run_worker("map", {
        "home": str(home.root), "source": "pairs", "function": "wordjobs.not_a_function",
        "attempt": "m1", "partitions": 1, "origin": "w0",
    }).error
    assert error["kind"] == "UserCodeError"
    assert "'wordjobs.not_a_function'" in error["message"]


SORT_LINES = [
    "b\t1", "a\t2", "A\t3", "a b\t4", "ab\t5", "a\x01\t6", "a\t0", "\u00e9t\u00e9\t7", "\u00fc\t8",
    "z\t9", "\U0001f600\t10", "\u20ac\t11", "\t12", "a", "Zebra", "\x7f\t13", "\uffff", "a\r\t14",
]


def test_sort_orders_all_lines_of_a_dataset_by_code_point_like_lc_all_c(home):
    files = {"part-0": SORT_LINES[::2], "part-1": SORT_LINES[1::2]}
    publish_source(home, "mixed", files, "text")
    # A UTF-8 locale in the caller's environment must not change the order: one made here, so the test does
    # not depend on the locales this machine has (a missing locale is C, and the test would prove nothing).
    compiled = subprocess.run(["localedef", "-i", "en_US", "-f", "UTF-8", str(home.root.parent / "en_US.UTF-8")],
                              capture_output=True, text=True, timeout=120)
    assert compiled.returncode in (0, 1), f"cannot make en_US.UTF-8 (apt-get install locales): {compiled.stderr}"
    locale = {"LC_ALL": "en_US.UTF-8", "LANG": "en_US.UTF-8", "LOCPATH": str(home.root.parent)}
    by_locale = subprocess.run(["sort"], input="".join(line + "\n" for line in SORT_LINES).encode(), timeout=60,
                               capture_output=True, env=dict(os.environ, **locale)).stdout.decode().split("\n")[:-1]
    assert sorted(by_locale) == sorted(SORT_LINES) and by_locale != sorted(SORT_LINES), "the locale is not in effect"
    reply = run_worker("sort", {
        "home": str(home.root), "source": "mixed", "attempt": "s1", "origin": "w0",
    }, **locale)
    result = reply.result
    path = home.tmp / "s1" / "sorted.w0"
    assert lines_of(path) == sorted(SORT_LINES, key=sort_key)  # key first, then the line (sorting.py)
    facts = result["files"]["sorted.w0"]
    assert facts["sorted"] is True
    assert facts["lines"] == len(SORT_LINES) == result["counters"]["lines in"]
    assert facts["bytes"] == path.stat().st_size
    assert facts["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sorted(os.listdir(home.tmp / "s1")) == ["sorted.w0"]


def test_sort_keeps_all_lines_of_a_key_together_including_prefix_keys(home):
    pairs = [("a", "1"), ("ab", "2"), ("a\x01", "3"), ("a", "4"), ("ab", "5"), ("a\x01", "6"), ("a", "")]
    publish_source(home, "pairs", {"p00000.x": [f"{k}\t{v}" for k, v in pairs]}, "records")
    _ = run_worker("sort", {"home": str(home.root), "source": "pairs", "attempt": "s1", "origin": "w0"}).result
    keys = [line.split("\t")[0] for line in lines_of(home.tmp / "s1" / "sorted.w0")]
    runs = [key for i, key in enumerate(keys) if i == 0 or keys[i - 1] != key]
    assert sorted(runs) == sorted(set(k for k, _ in pairs))


def test_sort_with_unique_drops_duplicate_lines_and_counts_what_is_left(home):
    lines = ["b\t1", "a\t1", "b\t1", "a\t1", "a\t2", "\u00fc\t1", "\u00fc\t1", "a\t1"]
    publish_source(home, "dups", {"part-0": lines[:4], "part-1": lines[4:]}, "text")
    result = run_worker("sort", {
        "home": str(home.root), "source": "dups", "attempt": "s1", "origin": "w3", "unique": True,
    }).result
    path = home.tmp / "s1" / "sorted.w3"
    assert lines_of(path) == sorted(set(lines))
    facts = result["files"]["sorted.w3"]
    assert facts["lines"] == len(set(lines))
    assert facts["bytes"] == path.stat().st_size
    assert facts["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert result["counters"]["lines in"] == len(lines)


def test_reduce_rejects_unsorted_input_naming_file_and_line(home):
    publish_source(home, "pairs", {"p00000.x": ["a\t1", "b\t2", "b\t3", "a\t4", "c\t5"]}, "records")
    error = run_worker("reduce", {
        "home": str(home.root), "source": "pairs", "function": "wordjobs.total",
        "attempt": "r1", "partitions": 1, "origin": "w0",
    }).error
    assert error["kind"] == "InputError"
    assert error["message"].startswith("p00000.x line 4: input is not sorted")


def test_reduce_rejects_unsorted_input_in_the_second_of_several_files(home):
    publish_source(home, "pairs", {
        "p00000.x": ["a\t1", "c\t2"],
        "p00001.y": ["a\t3", "b\t4", "d\t5", "c\t6"],
    }, "records")
    error = run_worker("reduce", {
        "home": str(home.root), "source": "pairs", "function": "wordjobs.total",
        "attempt": "r1", "partitions": 1, "origin": "w0",
    }).error
    assert error["kind"] == "InputError"
    assert error["message"].startswith("p00001.y line 4: input is not sorted")


def test_reduce_names_the_right_file_and_line_of_a_record_without_tab_among_several_files(home):
    publish_source(home, "pairs", {
        "p00000.x": ["a", "c\t2"],
        "p00001.y": ["b\t1", "d\t5"],
    }, "records")
    error = run_worker("reduce", {
        "home": str(home.root), "source": "pairs", "function": "wordjobs.total",
        "attempt": "r1", "partitions": 1, "origin": "w0",
    }).error
    assert error["kind"] == "InputError"
    assert error["message"].startswith("p00000.x line 1: no tab in record")


def test_reduce_merges_several_sorted_files_and_groups_every_key_once(home):
    pairs = [("a", 1), ("ab", 2), ("a\x01", 3), ("a", 4), ("ab", 5), ("\u00fc", 6), ("a\x01", 7), ("z", 8)]
    lines = [f"{k}\t{v}" for k, v in pairs]
    publish_source(home, "pairs", {"p00000.x": sorted(lines[:4], key=sort_key),
                                          "p00001.y": sorted(lines[4:], key=sort_key)}, "records")
    result = run_worker("reduce", {
        "home": str(home.root), "source": "pairs", "function": "wordjobs.total",
        "attempt": "r1", "partitions": 2, "origin": "w0",
    }).result
    expected = Counter()
    for key, value in pairs:
        expected[key] += value
    got = {}
    for name in result["files"]:
        for line in lines_of(home.tmp / "r1" / name):
            key, value = line.split("\t")
            assert key not in got
            assert partition_of(key, 2) == int(name[1:6])
            got[key] = int(value)
    assert got == dict(expected)


def test_map_sort_reduce_and_cat_count_words_like_a_counter(home):
    publish_source(home, "text", TEXT, "text")
    base = {"partitions": 1, "origin": "w0"}
    run_and_publish(home, "map", dict(base, source="text", function="wordjobs.words"), "m1", "ones",
                    {"step": "map", "format": "records", "partitions": 1})
    run_and_publish(home, "sort", dict(base, source="ones"), "s1", "ones-sorted",
                    {"step": "sort", "format": "records", "partitions": 1})
    run_and_publish(home, "reduce", dict(base, source="ones-sorted", function="wordjobs.total"), "r1",
                    "counts", {"step": "reduce", "format": "records", "partitions": 1})
    reply = run_worker("cat", {"home": str(home.root), "source": "counts", "attempt": "c1"})
    assert reply.result["source"]["attempt"] == "r1"

    expected = Counter()
    for line in (line for lines in TEXT.values() for line in lines):
        key, _, value = line.partition("\t")
        expected.update((value or key).split())
    assert reply.stdout.decode("utf-8") == "".join(f"{w}\t{n}\n" for w, n in sorted(expected.items()))


def test_cat_writes_an_unsorted_dataset_sorted_to_stdout(home):
    files = {"p00000.x": ["k\t2", "b\t1", "\u00fc\t3"], "p00001.y": ["a\t9", "k\t1", "B\t0"]}
    publish_source(home, "pairs", files, "records")
    reply = run_worker("cat", {"home": str(home.root), "source": "pairs", "attempt": "c1"})
    everything = [line for lines in files.values() for line in lines]
    assert reply.result == {"source": {"attempt": "src-pairs", "format": "records", "partitions": 2},
                            "bytes": len(reply.stdout),  # what merge checks it received
                            "sha256": hashlib.sha256(reply.stdout).hexdigest()}
    assert reply.stdout.decode("utf-8") == "".join(line + "\n" for line in sorted(everything))
    assert not (home.tmp / "c1").exists()


def test_cat_sorts_map_output_whose_lines_differ_only_after_a_shared_prefix(home):
    # identity copies the lines in this order; sort (LC_ALL=C) puts "k\tx" before "k\tx\t".
    publish_source(home, "pairs", {"p00000.x": ["k\tx\t", "k\tx"]}, "records")
    run_and_publish(home, "map", {"source": "pairs", "function": "wordjobs.identity", "partitions": 1,
                                  "origin": "w0"}, "m1", "copied",
                    {"step": "map", "format": "records", "partitions": 1})
    reply = run_worker("cat", {"home": str(home.root), "source": "copied", "attempt": "c1"})
    assert reply.result["source"]["attempt"] == "m1"
    assert reply.stdout.decode("utf-8") == "k\tx\nk\tx\t\n"


def framed(files: dict, facts=None) -> bytes:
    """A framed stream of whole files (framing.py), each ending with ``facts`` or its true size and digest."""
    stream = b""
    for name, data in files.items():
        end = facts if facts is not None else {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        stream += framing.file_header(name, len(data)) + data + framing.end_header(name, end)
    return stream


def test_receive_takes_several_files_on_one_stream_and_reports_bytes_lines_and_sha256(home):
    data = "one\ntwo\t2\n\u00fc\xe9\nno final newline".encode("utf-8") * 1000
    reply = run_worker("receive", {"home": str(home.root), "attempt": "l1"},
                       stdin=framed({"part-0": data, "part-1": b"a\n", "empty": b""}))
    assert reply.result == {"files": {
        "part-0": {"bytes": len(data), "lines": data.count(b"\n"), "sha256": hashlib.sha256(data).hexdigest(),
                   "sorted": False},
        "part-1": {"bytes": 2, "lines": 1, "sha256": hashlib.sha256(b"a\n").hexdigest(), "sorted": False},
        "empty": {"bytes": 0, "lines": 0, "sha256": hashlib.sha256(b"").hexdigest(), "sorted": False},
    }}
    assert (home.tmp / "l1" / "part-0").read_bytes() == data
    assert sorted(os.listdir(home.tmp / "l1")) == ["empty", "part-0", "part-1"]


def test_receive_widens_its_stdin_pipe_to_a_megabyte_and_leaves_other_files_alone(tmp_path):
    from reductio.worker.receiving import _F_SETPIPE_SZ, _widen_pipe

    read_end, write_end = os.pipe()
    try:
        _widen_pipe(read_end)
        assert fcntl.fcntl(read_end, _F_SETPIPE_SZ + 1) == 1 << 20  # F_GETPIPE_SZ
    finally:
        os.close(read_end)
        os.close(write_end)
    with open(tmp_path / "file", "wb") as plain:
        _widen_pipe(plain.fileno())  # not a pipe: nothing happens, nothing is raised


def test_receive_refuses_a_file_that_arrives_different_from_what_was_expected(home):
    data = b"a\t1\nb\t2\n"
    expected = {"bytes": len(data) + 1, "sha256": hashlib.sha256(data).hexdigest(), "sorted": True}
    error = run_worker("receive", {"home": str(home.root), "attempt": "l1"},
                       stdin=framed({"p00000.w0": data}, expected)).error
    assert error["kind"] == "DatasetError"
    assert error["message"].startswith("p00000.w0 arrived damaged")
    assert os.listdir(home.tmp / "l1") == []


@pytest.mark.parametrize("name", ["../escape", ".hidden", "a/b", "a b", "caf\u00e9"])
def test_receive_refuses_a_file_name_that_could_leave_the_attempt_folder_or_need_quoting(home, name):
    with pytest.raises(DatasetError, match="bad file name"):
        framing.file_header(name, 2)  # no sender writes one
    header = f"file {name} 2\n".encode("utf-8")
    error = run_worker("receive", {"home": str(home.root), "attempt": "l1"}, stdin=header + b"x\n").error
    assert error["kind"] == "DatasetError"
    assert "bad file name" in error["message"] or "garbled" in error["message"], error
    assert os.listdir(home.tmp / "l1") == []
    assert not (home.tmp / "escape").exists()


@pytest.mark.parametrize("header", [b"file p0 -1", b"file p0 1x", b"end p0 2 ab maybe", b"{\"ping\": true}", b"ping 1",
                                    b"x" * 2000])
def test_receive_refuses_a_garbled_frame_header(home, header):
    error = run_worker("receive", {"home": str(home.root), "attempt": "l1"}, stdin=header + b"\n").error
    assert error["kind"] == "DatasetError" and "garbled" in error["message"], error


def test_frame_headers_are_words_and_a_ping_is_skipped(home):
    data = b"k\t1\n"
    assert framing.file_header("p00001.w00002-1", 4) == b"file p00001.w00002-1 4\n"
    digest = hashlib.sha256(data).hexdigest()
    assert (framing.end_header("p1", {"bytes": 4, "sha256": digest, "sorted": True})
            == f"end p1 4 {digest} sorted\n".encode())
    stream = framing.PING + framed({"p1": data}) + framing.PING
    reply = run_worker("receive", {"home": str(home.root), "attempt": "l1"}, stdin=stream)
    assert reply.result == {"files": {"p1": {"bytes": 4, "lines": 1, "sha256": digest, "sorted": False}}}


def test_receive_refuses_a_stream_cut_inside_a_file_and_keeps_nothing_of_it(home):
    whole = framed({"part-0": b"a\nb\n"})
    for cut in (len(framing.file_header("part-0", 4)) + 2, len(whole) - 3):
        error = run_worker("receive", {"home": str(home.root), "attempt": "l1"}, stdin=whole[:cut]).error
        assert error["kind"] == "DatasetError", error
        assert os.listdir(home.tmp / "l1") == []


def test_receive_stops_when_its_sender_falls_silent_for_dead_after(home):
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "reductio.worker", "receive"],
        stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(REPO)))
    process.stdin.write(params_frame({"home": str(home.root), "attempt": "l1",
                                      "head": {"beat": 0.2, "dead_after": 1, "stdin": "data"}}))
    process.stdin.write(framing.file_header("part-0", 10) + b"abc")
    process.stdin.flush()
    process.wait(timeout=30)  # stdin stays open: the sender is silent, not gone
    with process.stdin, process.stderr:
        stderr = process.stderr.read()
    assert process.returncode == 1
    assert time.monotonic() - started < 10
    assert b"the sender sent nothing for 1 s" in stderr
    assert os.listdir(home.tmp / "l1") == []


def test_publish_step_refuses_files_that_do_not_match_and_publishes_nothing(home):
    result = run_worker("receive", {"home": str(home.root), "attempt": "l1"},
                        stdin=framed({"part-0": b"a\nb\n"})).result
    files = {"part-0": dict(result["files"]["part-0"], bytes=3)}
    error = run_worker("publish", {
        "home": str(home.root), "attempt": "l1", "target": "loaded", "files": files, "facts": {"step": "load"},
    }).error
    assert error["kind"] == "DatasetError"
    assert "wrong size ['part-0']" in error["message"]
    assert home.datasets() == []


def test_status_reports_files_lines_bytes_and_step_of_each_dataset(home):
    publish_source(home, "text", TEXT, "text")
    publish_source(home, "pairs", {"p00000.x": ["a\t1", "b\t2"]}, "records")
    (home.data / "broken").mkdir()
    datasets = run_worker("status", {"home": str(home.root)}).result["datasets"]
    assert set(datasets) == {"text", "pairs", "broken"}
    text_bytes = sum(len("".join(line + "\n" for line in lines).encode("utf-8")) for lines in TEXT.values())
    facts = ("files", "lines", "bytes", "step")
    assert {key: datasets["text"][key] for key in facts} == {
        "files": 2, "lines": sum(map(len, TEXT.values())), "bytes": text_bytes, "step": "load"}
    assert {key: datasets["pairs"][key] for key in facts} == {"files": 1, "lines": 2, "bytes": 8, "step": "load"}
    assert f"no {MARKER} marker" in datasets["broken"]["error"]


def test_delete_removes_a_dataset_and_reports_whether_there_was_one(home):
    publish_source(home, "pairs", {"p00000.x": ["a\t1"]}, "records")
    version = (home.data / "pairs").resolve()
    assert run_worker("delete", {"home": str(home.root), "name": "pairs"}).result == {"deleted": True}
    assert not os.path.lexists(home.data / "pairs")
    assert not version.exists()
    assert run_worker("delete", {"home": str(home.root), "name": "pairs"}).result == {"deleted": False}


def test_delete_refuses_a_bad_dataset_name(home):
    error = run_worker("delete", {"home": str(home.root), "name": "../store"}).error
    assert error["kind"] == "DatasetError"
    assert "bad dataset name" in error["message"]


@pytest.mark.parametrize("argv", [["explode"], ["status", '{"home": "/tmp"}'], []])
def test_an_unknown_step_or_parameters_in_argv_is_a_usage_error(argv):
    done = subprocess.run([sys.executable, "-m", "reductio.worker", *argv], capture_output=True, timeout=60,
                          input=params_frame({"home": "/nowhere"}))
    assert done.returncode == 2
    stderr = done.stderr.decode()
    assert stderr.startswith("usage: python -m reductio.worker {")
    assert "map" in stderr and "reduce" in stderr
    assert "reductio-result" not in stderr and "reductio-error" not in stderr
    assert done.stdout == b""


@pytest.mark.parametrize("stdin, said", [(b"", "no parameters on stdin"), (b"{}\n", "does not start with"),
                                         (b"100\n{}\n", "ended inside the parameters")])
def test_a_worker_without_its_parameters_on_stdin_says_so(stdin, said):
    done = subprocess.run([sys.executable, "-m", "reductio.worker", "status"], capture_output=True, timeout=60,
                          input=stdin)
    assert done.returncode == 2
    assert said in done.stderr.decode()


def test_the_stdin_after_the_parameters_is_left_whole_for_the_step(home):
    data = framed({"part-0": b"a\nb\n"})
    reply = run_worker("receive", {"home": str(home.root), "attempt": "l1", "pad": "x" * 300_000}, stdin=data)
    assert reply.result["files"]["part-0"]["lines"] == 2
