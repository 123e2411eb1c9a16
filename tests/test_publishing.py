"""Never a wrong answer with exit 0: a dataset knows its cluster, a step reads the version it checked, and a
publish is all-or-nothing across workers (issue 27, items 2-4)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
from invoke import Exit

from conftest import WORDJOBS, Background, make_context, write_lines
from reductio import tasks
from reductio.store import Home, file_facts

# A user's project with the faults these tests need, each written as user code could.
PROJECT = '''
import json, os, sys, time
from pathlib import Path


def identity(key, value):
    yield key, value


def holding(key, value):
    """identity; on key "hold", whose value names a file: say so, then wait (60 s at most) for FILE.go."""
    if key == "hold":
        Path(value + ".reached").touch()
        deadline = time.time() + 60
        while not os.path.exists(value + ".go") and time.time() < deadline:
            time.sleep(0.02)
    yield key, value


def _params():
    """The step's home, attempt and origin, from the attempt folder this worker process holds open (its
    parameters came on stdin, which the step has read)."""
    for descriptor in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{descriptor}")
        except OSError:
            continue
        parent, attempt = os.path.split(target)
        if os.path.basename(parent) == "tmp" and "-" in attempt and "." not in attempt:
            home = os.path.dirname(parent)
            index = int(os.path.basename(home).rsplit("-", 1)[1])
            return {"home": home, "attempt": attempt, "origin": f"w{index:05d}"}
    raise RuntimeError("this process holds no attempt folder")


def stray_on_second(key, value):
    """identity; on the second worker, a file of its own lands in the step's attempt folder."""
    params = _params()
    if params["origin"] == "w00001":
        Path(params["home"], "tmp", params["attempt"], "stray").write_text("x")
    yield key, value


def blocks_switch_on_second(key, value):
    """identity; on the second worker, a folder sits where publishing keeps the version it replaces."""
    params = _params()
    if params["origin"] == "w00001":
        Path(params["home"], "data", ".out." + params["attempt"] + ".kept").mkdir(exist_ok=True)
    yield key, value


def fails_on_boom(key, value):
    if key == "boom":
        raise ValueError("no booms")
    yield key, value
'''


@pytest.fixture
def project(tmp_path) -> Path:
    folder = tmp_path / "proj"
    folder.mkdir()
    (folder / "faults.py").write_text(PROJECT)
    return folder


def homes() -> list:
    root = Path(os.environ["HOME"]) / ".reductio" / "local"
    return sorted(p for p in root.iterdir() if p.is_dir())


def linked(home: Path, name: str):
    link = home / "data" / name
    return os.readlink(link) if link.is_symlink() else None


def leftovers(home: Path) -> list:
    """Hidden links in data (prepared, kept) and store folders nothing links: what a finished publish leaves."""
    data = home / "data"
    hidden = [entry for entry in os.listdir(data) if entry.startswith(".")]
    used = {os.path.basename(os.readlink(data / entry)) for entry in os.listdir(data) if (data / entry).is_symlink()}
    return hidden + sorted(set(os.listdir(home / "store")) - used)


def words_file(tmp_path: Path, count: int = 3000) -> Path:
    return write_lines(tmp_path / "words.txt", [f"w{i % 977}\t{i}" for i in range(count)])


def one_line(message: str) -> str:
    assert "\n" not in message.strip(), message
    return message


# -- a dataset knows the cluster it was made on ------------------------------------------------------------


def test_a_cluster_that_shrank_refuses_every_step_reading_a_dataset_made_on_the_larger_one(tmp_path):
    two = make_context(2)
    tasks.setup(two)
    tasks.load(two, str(words_file(tmp_path)), "input")
    tasks.map(two, "wordjobs.identity", "input", "pairs")
    tasks.sort(two, "pairs", "sorted")
    tasks.reduce(two, "wordjobs.total", "sorted", "counts")

    one = make_context(1)
    tasks.setup(one)
    out = tmp_path / "out.tsv"
    for run in (lambda: tasks.merge(one, "counts", str(out)),
                lambda: tasks.map(one, "wordjobs.identity", "input", "again"),
                lambda: tasks.transform(one, "wordjobs.split_words", "input", "again"),
                lambda: tasks.sort(one, "pairs", "again"),
                lambda: tasks.reduce(one, "wordjobs.total", "sorted", "again"),
                lambda: tasks.scatter(one, "pairs", "again")):
        with pytest.raises(Exit) as refused:
            run()
        message = one_line(refused.value.message)
        assert "was made on 2 worker(s) (local-0, local-1), the cluster now has 1 worker(s) (local-0)" in message
        assert "load or initialize" in message
    assert not out.exists()
    assert linked(homes()[0], "again") is None


def test_a_cluster_that_grew_refuses_a_dataset_made_on_the_smaller_one_naming_both(tmp_path):
    two = make_context(2)
    tasks.setup(two)
    tasks.load(two, str(words_file(tmp_path)), "input")
    tasks.map(two, "wordjobs.identity", "input", "pairs")
    three = make_context(3)
    tasks.setup(three)
    with pytest.raises(Exit) as refused:
        tasks.merge(three, "pairs", str(tmp_path / "out.tsv"))
    assert "was made on 2 worker(s) (local-0, local-1), the cluster now has 3 worker(s)" in one_line(
        refused.value.message)
    with pytest.raises(Exit) as refused:
        tasks.reduce(three, "wordjobs.total", "pairs", "counts")
    assert "load or initialize" in refused.value.message


def test_an_ssh_cluster_that_shrank_or_grew_refuses_a_dataset_made_on_the_other(ssh_workers, tmp_path):
    ssh_workers(2)
    c = make_context(project=WORDJOBS)
    tasks.setup(c)
    tasks.load(c, str(words_file(tmp_path)), "shape-input")
    tasks.map(c, "wordjobs.identity", "shape-input", "shape-pairs")
    for count in (1, 3):
        ssh_workers(count)
        c = make_context(project=WORDJOBS)
        if count > 2:
            tasks.setup(c)  # the new worker's home
        with pytest.raises(Exit) as refused:
            tasks.merge(c, "shape-pairs", str(tmp_path / "out.tsv"))
        assert "was made on 2 worker(s) (ssh-0, ssh-1), the cluster now has" in one_line(refused.value.message)
        with pytest.raises(Exit) as refused:
            tasks.scatter(c, "shape-pairs", "shape-here")
        assert f"the cluster now has {count} worker(s)" in refused.value.message
    assert not (tmp_path / "out.tsv").exists()


def test_status_marks_a_dataset_made_on_another_cluster(tmp_path, capsys):
    two = make_context(2)
    tasks.setup(two)
    tasks.load(two, str(words_file(tmp_path)), "input")
    one = make_context(1)
    capsys.readouterr()
    tasks.status(one)
    rows = capsys.readouterr().out.splitlines()
    assert rows[1].split()[:3] == ["local-0", "input", "OTHER-CLUSTER"], rows


# -- a step reads exactly the version it checked -------------------------------------------------------------


def test_a_source_reloaded_while_a_map_reads_it_is_never_mixed_into_the_target(tmp_path, project):
    c = make_context(2, project=project, processes=1)
    tasks.setup(c)
    hold = tmp_path / "hold"
    folder = tmp_path / "inputs"
    folder.mkdir()
    first = [f"hold\t{hold}"] + [f"a{i}\told" for i in range(2000)]
    second = [f"b{i}\told" for i in range(2000)]
    write_lines(folder / "a.txt", first)
    write_lines(folder / "b.txt", second)
    tasks.load(c, str(folder), "input")

    mapping = Background(lambda: tasks.map(c, "faults.holding", "input", "pairs"))
    deadline = 60
    while not Path(str(hold) + ".reached").exists():
        assert mapping.is_alive() and deadline > 0, mapping.error
        mapping.join(0.05)
        deadline -= 0.05
    write_lines(folder / "a.txt", [f"a{i}\tnew" for i in range(2000)])  # the second head reloads the source
    write_lines(folder / "b.txt", [f"b{i}\tnew" for i in range(2000)])
    tasks.load(make_context(2, project=project), str(folder), "input")
    Path(str(hold) + ".go").touch()
    mapping.join(90)
    assert not mapping.is_alive()

    out = tmp_path / "out.tsv"
    if mapping.error is None:  # published: then wholly the version it checked
        tasks.merge(c, "pairs", str(out))
        assert Counter(out.read_text().splitlines()) == Counter(first + second)
    else:
        assert "changed" in str(mapping.error) and "run" in str(mapping.error)
    tasks.merge(c, "input", str(out))
    assert "\told\n" not in out.read_text()
    tasks.map(c, "faults.identity", "input", "later")  # the next publish cleans the version the map held
    for home in homes():
        assert leftovers(home) == [], home


# -- publishing is all-or-nothing across workers ----------------------------------------------------------


def _publish_old_out(tmp_path, project):
    c = make_context(2, project=project, processes=1)
    tasks.setup(c)
    lines = [f"k{i}\tv{i}" for i in range(3000)]
    tasks.load(c, str(write_lines(tmp_path / "in.txt", lines)), "input")
    tasks.map(c, "faults.identity", "input", "out")
    return c, lines, [linked(home, "out") for home in homes()]


def _assert_old_out_everywhere(c, tmp_path, lines, before):
    assert [linked(home, "out") for home in homes()] == before
    for home in homes():
        assert leftovers(home) == [], home
        assert list((home / "tmp").iterdir()) == [], home
    tasks.merge(c, "out", str(tmp_path / "out.tsv"))
    assert Counter((tmp_path / "out.tsv").read_text().splitlines()) == Counter(lines)


def test_a_worker_refusing_to_publish_leaves_every_worker_on_the_old_version(tmp_path, project):
    c, lines, before = _publish_old_out(tmp_path, project)
    with pytest.raises(Exit) as refused:
        tasks.map(c, "faults.stray_on_second", "input", "out")
    assert "unexpected ['stray']" in refused.value.message
    _assert_old_out_everywhere(c, tmp_path, lines, before)


def test_a_switch_failing_on_one_worker_is_undone_on_the_others(tmp_path, project):
    c, lines, before = _publish_old_out(tmp_path, project)
    with pytest.raises(Exit) as refused:
        tasks.map(c, "faults.blocks_switch_on_second", "input", "out")
    assert "cannot switch 'out'" in refused.value.message
    for home in homes():  # the folder the test's user code planted
        for entry in (home / "data").iterdir():
            if entry.is_dir() and not entry.is_symlink():
                entry.rmdir()
    _assert_old_out_everywhere(c, tmp_path, lines, before)


def _half_published(tmp_path, switched: int, prepared: int):
    """What a head killed while publishing leaves: a new version of "input" prepared on the first ``prepared``
    workers, switched to on the first ``switched``."""
    c = make_context(2)
    tasks.setup(c)
    old = [f"k{i}\told" for i in range(3000)]
    tasks.load(c, str(write_lines(tmp_path / "in.txt", old)), "input")
    new = {}
    for index, root in enumerate(homes()[:prepared]):
        home = Home(root)
        marker = home.marker("input")
        staged = home.tmp / "20991231T000000-feedf00d"
        staged.mkdir()
        files = {}
        for name in marker["files"]:
            data = (home.data / "input" / name).read_bytes().replace(b"\told", b"\tnew")
            (staged / name).write_bytes(data)
            files[name] = file_facts(staged / name)
            new[root.name] = new.get(root.name, b"") + data
        facts = {key: value for key, value in marker.items() if key not in ("files", "attempt", "dataset")}
        home.prepare_version(staged.name, "input", files, facts)
        if index < switched:
            home.switch(staged.name, "input")
    return c, old


def test_the_next_run_completes_a_publish_a_killed_head_left_half_switched(tmp_path):
    c, old = _half_published(tmp_path, switched=1, prepared=2)
    out = tmp_path / "out.tsv"
    tasks.merge(c, "input", str(out))
    assert Counter(out.read_text().splitlines()) == Counter(line.replace("old", "new") for line in old)
    assert {linked(home, "input") for home in homes()} == {"../store/input.20991231T000000-feedf00d"}
    for home in homes():
        assert leftovers(home) == [], home


def test_the_next_run_completes_a_first_publish_left_on_one_worker_only(tmp_path):
    c = make_context(2)
    tasks.setup(c)
    lines = {}
    for index, root in enumerate(homes()):
        home = Home(root)
        staged = home.tmp / "20991231T000000-0000cafe"
        staged.mkdir()
        lines[index] = [f"k{index}.{i}\tv" for i in range(100)]
        write_lines(staged / "s00000.load", lines[index])
        files = {"s00000.load": file_facts(staged / "s00000.load")}
        facts = {"step": "load", "format": "text", "partitions": None, "cluster": ["local-0", "local-1"]}
        home.prepare_version(staged.name, "input", files, facts)
        if index == 0:
            home.switch(staged.name, "input")
    out = tmp_path / "out.tsv"
    tasks.merge(c, "input", str(out))
    assert Counter(out.read_text().splitlines()) == Counter(lines[0] + lines[1])
    for home in homes():
        assert leftovers(home) == [], home


def test_the_next_run_undoes_a_half_switch_that_cannot_be_completed(tmp_path):
    c, old = _half_published(tmp_path, switched=1, prepared=1)
    out = tmp_path / "out.tsv"
    tasks.merge(c, "input", str(out))
    assert Counter(out.read_text().splitlines()) == Counter(old)
    for home in homes():
        assert leftovers(home) == [], home


def test_a_version_prepared_everywhere_but_switched_nowhere_stays_unseen(tmp_path):
    c, old = _half_published(tmp_path, switched=0, prepared=2)
    out = tmp_path / "out.tsv"
    tasks.merge(c, "input", str(out))
    assert Counter(out.read_text().splitlines()) == Counter(old)


def test_the_version_a_publish_replaced_stays_until_every_worker_switched_then_goes(tmp_path):
    c, old = _half_published(tmp_path, switched=1, prepared=2)
    first = homes()[0]
    kept = [entry for entry in os.listdir(first / "data") if entry.endswith(".kept")]
    assert len(kept) == 1
    assert (first / "data" / os.readlink(first / "data" / kept[0])).is_dir()  # the old version, still there
    tasks.status(c)
    tasks.merge(c, "input", str(tmp_path / "out.tsv"))
    assert [len(os.listdir(home / "store")) for home in homes()] == [1, 1]


# -- refusals in one line ------------------------------------------------------------------------------------


def test_scatter_of_a_sorted_dataset_is_refused_in_one_line_saying_what_to_do(tmp_path):
    c = make_context(2)
    tasks.setup(c)
    tasks.load(c, str(words_file(tmp_path)), "input")
    tasks.map(c, "wordjobs.identity", "input", "pairs")
    tasks.sort(c, "pairs", "sorted")
    for source in ("sorted", "input"):
        with pytest.raises(Exit) as refused:
            tasks.scatter(c, source, "moved")
        message = one_line(refused.value.message)
        assert f"dataset {source!r} is not partitioned" in message and "scatter that, then sort" in message


def test_merge_of_whole_files_is_refused_in_one_line(tmp_path):
    c = make_context(2)
    tasks.setup(c)
    tasks.load(c, str(words_file(tmp_path)), "files", whole=True)
    with pytest.raises(Exit) as refused:
        tasks.merge(c, "files", str(tmp_path / "out.tsv"))
    assert "holds whole files (load --whole), which merge cannot read" in one_line(refused.value.message)
    assert not (tmp_path / "out.tsv").exists()


def test_a_map_error_names_the_input_file_and_its_own_line_number(tmp_path, project):
    c = make_context(2, project=project, processes=1)
    tasks.setup(c)
    folder = tmp_path / "inputs"
    folder.mkdir()
    write_lines(folder / "bad.txt", [f"k{i}\t{i}" if i != 2500 else "boom\t2" for i in range(1, 3001)])
    write_lines(folder / "fine.txt", ["a\t1"])
    tasks.load(c, str(folder), "input")
    with pytest.raises(Exit) as failed:
        tasks.map(c, "faults.fails_on_boom", "input", "out")
    assert f"{folder / 'bad.txt'} line 2500 (s00000.load line " in failed.value.message, failed.value.message
    assert "s00000.load line 2500)" not in failed.value.message  # the worker's shard holds every other block
