"""A worker's home: dataset names, atomic publishing, markers, deleting and folder modes."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys

import pytest

from reductio.errors import DatasetError
from reductio.worker.store import MARKER, Home, check_name, file_facts


@pytest.fixture
def home(tmp_path):
    home = Home(tmp_path / "reductio-home")
    home.prepare()
    return home


def _stage(home: Home, attempt: str, contents: dict) -> dict:
    """Write ``contents`` (file name -> bytes) into an attempt folder; return their facts.

    The folder is made as a step makes it, but not held: the step that wrote it has ended (``attempt_dir`` would
    hold its lock for the rest of this test process, as it does for a step's process)."""
    folder = home.tmp / attempt
    folder.mkdir(mode=0o700, exist_ok=True)
    for name, data in contents.items():
        (folder / name).write_bytes(data)
    return {name: file_facts(folder / name) for name in contents}


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize(
    "name",
    ["", "..", "a/b", "../x", ".hidden", "-x", "a b", "a;b", "$(x)", "\u00fc", "x" * 101,
     "a..b", "words\n", "a\\b", "/abs", None, 3],
)
def test_check_name_refuses_names_that_could_leave_their_folder_or_need_quoting(name):
    with pytest.raises(DatasetError) as caught:
        check_name(name)
    assert f"bad dataset name {name!r}" in str(caught.value)


@pytest.mark.parametrize("name", ["words", "pairs-2", "a.b", "x_y", "_x", "9", "x" * 100])
def test_check_name_accepts_plain_ascii_names(name):
    assert check_name(name) == name


def test_prepare_creates_home_folders_readable_by_the_owner_only(tmp_path):
    root = tmp_path / "deep" / "home"
    old = os.umask(0o022)
    try:
        home = Home(root)
        home.prepare()
    finally:
        os.umask(old)
    for folder in (root, root / "data", root / "store", root / "tmp"):
        assert folder.is_dir()
        assert _mode(folder) == 0o700, folder


def test_prepare_tightens_the_mode_of_an_existing_home(tmp_path):
    root = tmp_path / "home"
    (root / "data").mkdir(parents=True)
    os.chmod(root, 0o755)
    os.chmod(root / "data", 0o777)
    Home(root).prepare()
    assert _mode(root) == 0o700
    assert _mode(root / "data") == 0o700


def test_attempt_folders_are_created_readable_by_the_owner_only(home):
    old = os.umask(0o000)
    try:
        folder = home.attempt_dir("attempt-1")
    finally:
        os.umask(old)
    assert folder == home.tmp / "attempt-1"
    assert _mode(folder) == 0o700


def test_publish_links_the_dataset_to_a_store_folder_holding_files_and_marker(home):
    files = _stage(home, "a1", {"p00000.w0": b"a\t1\nb\t2\n", "p00001.w0": b"c\t3\n"})
    facts = {"step": "map", "format": "records", "partitions": 2}
    marker = home.publish("a1", "words", files, facts)

    link = home.data / "words"
    assert link.is_symlink()
    assert os.readlink(link) == os.path.join("..", "store", "words.a1")
    assert link.resolve() == (home.store / "words.a1").resolve()
    assert not (home.tmp / "a1").exists()
    assert sorted(p.name for p in (home.store / "words.a1").iterdir()) == [MARKER, "p00000.w0", "p00001.w0"]

    on_disk = json.loads((home.store / "words.a1" / MARKER).read_text(encoding="utf-8"))
    assert on_disk["files"] == files
    assert on_disk["dataset"] == "words"
    assert on_disk["attempt"] == "a1"
    assert (on_disk["step"], on_disk["format"], on_disk["partitions"]) == ("map", "records", 2)
    assert isinstance(on_disk["published"], float)
    assert home.marker("words") == on_disk == marker
    version = home.store / "words.a1"  # read through the version's own folder, never the link
    assert home.files("words") == [version / "p00000.w0", version / "p00001.w0"]
    assert (link / "p00001.w0").read_bytes() == b"c\t3\n"
    assert home.datasets() == ["words"]


def test_publish_records_line_counts_and_checksums_in_the_marker(home):
    files = _stage(home, "a1", {"p00000.w0": b"x\n\ny\n"})
    home.publish("a1", "lines", files, {"step": "load"})
    entry = home.marker("lines")["files"]["p00000.w0"]
    assert entry["bytes"] == 5
    assert entry["lines"] == 3
    assert entry["sha256"] == hashlib.sha256(b"x\n\ny\n").hexdigest()


def _assert_nothing_published(home: Home, name: str) -> None:
    assert not os.path.lexists(home.data / name)
    assert list(home.store.iterdir()) == []
    assert home.datasets() == []


def test_publish_refuses_when_a_file_is_missing_and_publishes_nothing(home):
    files = _stage(home, "a1", {"p00000.w0": b"a\t1\n"})
    files["p00001.w0"] = {"bytes": 4, "lines": 1, "sha256": "0" * 64, "sorted": False}
    with pytest.raises(DatasetError) as caught:
        home.publish("a1", "words", files, {"step": "map"})
    assert "missing ['p00001.w0']" in str(caught.value)
    _assert_nothing_published(home, "words")
    assert not (home.tmp / "a1" / MARKER).exists()


def test_publish_refuses_an_unexpected_extra_file_and_publishes_nothing(home):
    files = _stage(home, "a1", {"p00000.w0": b"a\t1\n"})
    (home.tmp / "a1" / "stray").write_bytes(b"junk\n")
    with pytest.raises(DatasetError) as caught:
        home.publish("a1", "words", files, {"step": "map"})
    assert "unexpected ['stray']" in str(caught.value)
    _assert_nothing_published(home, "words")


def test_publish_refuses_a_file_of_the_wrong_size_and_publishes_nothing(home):
    files = _stage(home, "a1", {"p00000.w0": b"a\t1\n", "p00001.w0": b"b\t2\n"})
    (home.tmp / "a1" / "p00001.w0").write_bytes(b"b\t2\nc\t")  # grew after it was reported
    with pytest.raises(DatasetError) as caught:
        home.publish("a1", "words", files, {"step": "map"})
    message = str(caught.value)
    assert "wrong size ['p00001.w0']" in message
    assert "missing none" in message and "unexpected none" in message
    _assert_nothing_published(home, "words")


def test_publish_refuses_a_same_size_file_whose_sha256_is_not_what_the_step_reported(home):
    files = _stage(home, "a1", {"p00000.w0": b"a\t1\n", "p00001.w0": b"b\t2\n"})
    (home.tmp / "a1" / "p00001.w0").write_bytes(b"X\t9\n")  # planted: same size, other lines
    with pytest.raises(DatasetError) as caught:
        home.publish("a1", "words", files, {"step": "map"})
    assert "p00001.w0 does not match the SHA-256 the step reported" in str(caught.value)
    _assert_nothing_published(home, "words")


def test_a_version_being_read_is_kept_through_a_republish_and_cleaned_once_its_reader_ended(home, tmp_path):
    home.publish("a1", "words", _stage(home, "a1", {"p00000.w0": b"old\t1\n"}), {"step": "map"})
    reader = subprocess.Popen(  # another process reads version a1, as a step does, until told to stop
        [sys.executable, "-c", "import sys; from reductio.worker.store import Home; home = Home(sys.argv[1]);"
         " marker, files = home.version('words', 'a1'); print(files[0].read_text(), end='', flush=True);"
         " sys.stdin.read(); print(files[0].read_text(), end='')", str(home.root)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline() == "old\t1\n"
        home.publish("a2", "words", _stage(home, "a2", {"p00000.w0": b"new\t2\n"}), {"step": "map"})
        assert home.marker("words")["attempt"] == "a2"
        assert (home.store / "words.a1").is_dir()  # still read: not removed from under its reader
        assert home.clean() == []
        out, _ = reader.communicate("", timeout=60)
        assert out == "old\t1\n"
    finally:
        reader.kill()
        reader.wait(30)
    assert home.clean() == ["words.a1"]
    with pytest.raises(DatasetError, match="version a1 is gone"):
        home.version("words", "a1")


def test_publish_refuses_an_attempt_that_never_ran(home):
    with pytest.raises(DatasetError, match="missing"):
        home.publish("ghost", "words", {}, {"step": "map"})
    _assert_nothing_published(home, "words")


def test_publish_refuses_a_bad_dataset_name_before_touching_anything(home):
    files = _stage(home, "a1", {"p00000.w0": b"a\t1\n"})
    with pytest.raises(DatasetError, match="bad dataset name"):
        home.publish("a1", "../escape", files, {"step": "map"})
    assert (home.tmp / "a1" / "p00000.w0").exists()
    assert list(home.store.iterdir()) == []


def test_republishing_a_name_replaces_the_old_version_and_removes_its_store_folder(home):
    old = _stage(home, "a1", {"p00000.w0": b"old\t1\n", "p00001.w0": b"older\t2\n"})
    home.publish("a1", "words", old, {"step": "map"})
    new = _stage(home, "a2", {"p00000.w0": b"new\t3\n"})
    home.publish("a2", "words", new, {"step": "reduce"})

    assert os.readlink(home.data / "words") == os.path.join("..", "store", "words.a2")
    assert not (home.store / "words.a1").exists()
    assert sorted(p.name for p in home.store.iterdir()) == ["words.a2"]
    marker = home.marker("words")
    assert (marker["attempt"], marker["step"]) == ("a2", "reduce")
    assert marker["files"] == new
    assert [p.name for p in home.files("words")] == ["p00000.w0"]
    assert (home.data / "words" / "p00000.w0").read_bytes() == b"new\t3\n"
    assert sorted(p.name for p in (home.data / "words").iterdir()) == [MARKER, "p00000.w0"]
    assert sorted(os.listdir(home.data)) == ["words"]  # no temporary link left behind


def test_publishing_the_same_attempt_again_is_a_harmless_retry(home):
    files = _stage(home, "a1", {"p00000.w0": b"a\t1\n"})
    first = home.publish("a1", "words", files, {"step": "map"})
    again = home.publish("a1", "words", files, {"step": "map"})
    assert again == first
    assert (home.data / "words" / "p00000.w0").read_bytes() == b"a\t1\n"


def test_marker_of_a_missing_dataset_is_a_dataset_error_naming_it(home):
    with pytest.raises(DatasetError) as caught:
        home.marker("nope")
    assert str(caught.value) == "no dataset 'nope'"


def test_marker_of_a_dataset_folder_without_success_marker_is_a_dataset_error(home):
    (home.data / "half").mkdir()
    (home.data / "half" / "p00000.w0").write_bytes(b"a\t1\n")
    with pytest.raises(DatasetError) as caught:
        home.marker("half")
    message = str(caught.value)
    assert "'half'" in message
    assert f"no {MARKER} marker" in message


def test_marker_of_a_linked_store_folder_without_success_marker_is_a_dataset_error(home):
    version = home.store / "half.a1"
    version.mkdir()
    (version / "p00000.w0").write_bytes(b"a\t1\n")
    os.symlink(os.path.join("..", "store", "half.a1"), home.data / "half")
    with pytest.raises(DatasetError, match=f"dataset 'half' has no {MARKER} marker"):
        home.marker("half")


def test_marker_refuses_a_bad_name(home):
    with pytest.raises(DatasetError, match="bad dataset name"):
        home.marker("../store")


def test_marker_in_a_home_that_was_never_prepared_says_so(tmp_path):
    with pytest.raises(DatasetError, match="no reductio home"):
        Home(tmp_path / "never").marker("words")


def test_delete_removes_the_link_and_the_store_folder(home):
    files = _stage(home, "a1", {"p00000.w0": b"a\t1\n"})
    home.publish("a1", "words", files, {"step": "map"})
    other = _stage(home, "b1", {"p00000.w0": b"b\t1\n"})
    home.publish("b1", "other", other, {"step": "map"})

    assert home.delete("words") is True
    assert not os.path.lexists(home.data / "words")
    assert not (home.store / "words.a1").exists()
    assert home.datasets() == ["other"]
    assert home.marker("other")["attempt"] == "b1"
    assert home.delete("words") is False


def test_delete_of_a_missing_dataset_returns_false(home):
    assert home.delete("never-made") is False


def test_delete_refuses_a_link_pointing_outside_the_home(home, tmp_path):
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep me")
    os.symlink(str(outside), home.data / "evil")
    with pytest.raises(DatasetError) as caught:
        home.delete("evil")
    assert "points outside the reductio home" in str(caught.value)
    assert (outside / "keep.txt").read_text() == "keep me"
    assert (home.data / "evil").is_symlink()


def test_delete_refuses_a_link_escaping_the_store_through_dot_dot(home, tmp_path):
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep me")
    os.symlink(os.path.join("..", "store", "..", "..", "precious"), home.data / "sneaky")
    with pytest.raises(DatasetError, match="points outside the reductio home"):
        home.delete("sneaky")
    assert (outside / "keep.txt").read_text() == "keep me"


def test_delete_refuses_a_bad_name(home):
    with pytest.raises(DatasetError, match="bad dataset name"):
        home.delete("..")


def test_datasets_lists_published_names_and_skips_hidden_entries(home):
    for attempt, name in (("a1", "zeta"), ("a2", "alpha")):
        files = _stage(home, attempt, {"p00000.w0": b"k\tv\n"})
        home.publish(attempt, name, files, {"step": "map"})
    (home.data / ".zeta.a9").symlink_to("nowhere")
    assert home.datasets() == ["alpha", "zeta"]
