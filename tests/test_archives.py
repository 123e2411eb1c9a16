"""Archives shipped with a command step: unpacked once per worker, seen by name in the working folder."""

from __future__ import annotations

import io
import multiprocessing
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from invoke import Exit

import programs
from conftest import make_context, write_lines
from reductio import tasks
from reductio.errors import UserCodeError
from reductio.worker import archives

# Prints each input word with the first line of every file under the folder named in $LOOK_IN.
LOOKUP = '| while read w; do for f in $(find -L "$LOOK_IN" -type f | sort); do ' \
         'printf "%s\\t%s=%s\\n" "$w" "$f" "$(head -n 1 "$f")"; done; done'


@pytest.fixture
def c():
    context = make_context(2)
    tasks.setup(context)
    return context


def tar_gz(path: Path, members: dict) -> Path:
    """A tar.gz of text ``members`` (name -> text)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def zipped(path: Path, members: dict) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in members.items():
            archive.writestr(name, text)
    return path


def looked_up(c, tmp_path, folder: str, archive_list: list, target: str = "seen") -> set:
    tasks.map(c, LOOKUP, "words", target, archives=archive_list, env=[f"LOOK_IN={folder}"])
    tasks.merge(c, target, str(tmp_path / f"{target}.tsv"))
    lines = (tmp_path / f"{target}.tsv").read_text().splitlines()
    assert len(set(lines)) == len(lines), lines  # every word met every file once: a set would hide a line twice
    return set(lines)


def test_a_tar_and_a_zip_are_unpacked_under_their_names_for_map_and_reduce(c, tmp_path):
    model = tar_gz(tmp_path / "model.tar.gz", {"weights.txt": "w1\n", "sub/bias.txt": "b1\n"})
    lexicon = zipped(tmp_path / "lex.zip", {"stop/words.txt": "the\n"})
    tasks.load(c, str(write_lines(tmp_path / "in.txt", ["a", "b"])), "words")
    seen = looked_up(c, tmp_path, ".", [str(model), f"{lexicon}#lexicon"])
    assert seen == {f"{w}\t./{name}" for w in "ab" for name in [
        "lexicon/stop/words.txt=the", "model.tar.gz/sub/bias.txt=b1", "model.tar.gz/weights.txt=w1"]}
    tasks.scatter(c, "seen", "here")
    tasks.sort(c, "here", "sorted")
    keys_and_stop_word = '| cut -f1 | uniq | while read w; do printf "%s\\t%s\\n" "$w" "$(cat lexicon/stop/*)"; done'
    tasks.reduce(c, keys_and_stop_word, "sorted", "reduced", archives=[f"{lexicon}#lexicon"])
    tasks.merge(c, "reduced", str(tmp_path / "reduced.tsv"))
    assert sorted((tmp_path / "reduced.tsv").read_text().splitlines()) == ["a\tthe", "b\tthe"]


def test_a_step_is_redone_when_its_archive_changes_and_skipped_when_not(c, tmp_path, capsys):
    tasks.load(c, str(write_lines(tmp_path / "in.txt", ["a"])), "words")
    model = tar_gz(tmp_path / "model.tar.gz", {"v.txt": "one\n"})
    assert looked_up(c, tmp_path, "model", [f"{model}#model"]) == {"a\tmodel/v.txt=one"}
    capsys.readouterr()
    tasks.map(c, LOOKUP, "words", "seen", archives=[f"{model}#model"], env=["LOOK_IN=model"])
    assert "map: seen is up to date" in capsys.readouterr().out
    tar_gz(model, {"v.txt": "two\n"})
    assert looked_up(c, tmp_path, "model", [f"{model}#model"]) == {"a\tmodel/v.txt=two"}


def test_a_file_that_is_no_archive_and_a_name_taken_by_a_file_are_refused_on_the_head(c, tmp_path):
    tasks.load(c, str(write_lines(tmp_path / "in.txt", ["a"])), "words")
    plain = write_lines(tmp_path / "notes.txt", ["hello"])
    with pytest.raises(Exit, match="notes.txt is not a tar or zip archive"):
        tasks.map(c, "| cat", "words", "out", archives=[str(plain)])
    model = tar_gz(tmp_path / "model.tar.gz", {"v.txt": "one\n"})
    with pytest.raises(Exit, match="two files to ship are called 'model'"):
        tasks.map(c, "| cat", "words", "out", files=[f"{plain}#model"], archives=[f"{model}#model"])
    with pytest.raises(Exit, match="files, archives and env are for a command"):
        tasks.map(c, "wordjobs.identity", "words", "out", archives=[str(model)])


@pytest.mark.parametrize("member, link", [("../escaped.txt", None), ("/tmp/absolute.txt", None),
                                          ("sub/../../escaped.txt", None), ("out", "../.."),
                                          ("abs", "/etc/passwd")])
def test_an_archive_with_a_member_landing_outside_its_folder_is_refused_whole(tmp_path, member, link):
    path = tmp_path / "shipped" / "digest"
    path.parent.mkdir()
    with tarfile.open(path, "w") as tar:
        tar.addfile(tarfile.TarInfo("fine.txt"), io.BytesIO(b""))
        info = tarfile.TarInfo(member)
        if link:
            info.type, info.linkname = tarfile.SYMTYPE, link
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(UserCodeError, match=f"archive 'model' holds '{member}'"):
        archives.unpacked(path, "model")
    assert sorted(p.name for p in path.parent.iterdir()) == ["digest"]  # nothing unpacked, nothing left over
    assert not (tmp_path / "escaped.txt").exists()


def test_a_map_step_names_the_bad_archive_in_its_error(c, tmp_path):
    tasks.load(c, str(write_lines(tmp_path / "in.txt", ["a"])), "words")
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tar:
        tar.addfile(tarfile.TarInfo("../escaped.txt"), io.BytesIO(b""))
    with pytest.raises(Exit, match=r"archive 'model' holds '\.\./escaped\.txt', which would land outside"):
        tasks.map(c, "| cat", "words", "out", archives=[f"{bad}#model"])


def _unpack_in_a_process(args):
    path, name = args
    folder = archives.unpacked(Path(path), name)
    return folder, sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_processes_unpacking_one_archive_at_once_all_see_it_whole(tmp_path):
    (tmp_path / "shipped").mkdir()
    members = {f"part{i:03d}/data.txt": "x" * 10_000 for i in range(200)}
    path = tar_gz(tmp_path / "shipped" / "digest", members)
    with multiprocessing.get_context("fork").Pool(8) as pool:
        results = pool.map(_unpack_in_a_process, [(str(path), "model")] * 8)
    expected = sorted([*members, *{name.split("/")[0] for name in members}])
    assert all(folder == path.with_name("digest.unpacked") and seen == expected for folder, seen in results)
    assert sorted(p.name for p in path.parent.iterdir()) == ["digest", "digest.unpacked"]


def test_the_command_line_takes_archives(tmp_path):
    fabfile = tmp_path / "fabfile.py"
    fabfile.write_text("from reductio.tasks import *\n")
    write_lines(tmp_path / "in.txt", ["a"])
    tar_gz(tmp_path / "model.tar.gz", {"v.txt": "one\n"})

    def run(*argv):
        return programs.reductio("-f", str(fabfile), *argv, cwd=tmp_path, timeout=120)

    for argv in [["setup"], ["load", "in.txt", "words"],
                 ["map", '| while read w; do printf "%s\\t%s\\n" "$w" "$(cat model/v.txt)"; done', "words", "seen",
                  "--archives", "model.tar.gz#model"],
                 ["merge", "seen", "seen.tsv"]]:
        done = run(*argv)
        assert done.returncode == 0, done.stderr
    assert (tmp_path / "seen.tsv").read_text() == "a\tone\n"


def test_archives_reach_ssh_workers_next_to_a_local_one(ssh_workers, tmp_path):
    ssh_workers(2, local=1)
    c = make_context()
    tasks.setup(c)
    tasks.load(c, str(write_lines(tmp_path / "in.txt", [str(i) for i in range(30)])), "words")
    model = tar_gz(tmp_path / "model.tgz", {"v.txt": "one\n", "deep/er/w.txt": "two\n"})
    seen = looked_up(c, tmp_path, "model", [f"{model}#model"])
    assert seen == {f"{i}\tmodel/{name}" for i in range(30) for name in ["deep/er/w.txt=two", "v.txt=one"]}


# Archives made to escape, unpacked by every Python a worker may run reductio with: the suite's own, Debian 12's
# /usr/bin/python3 (3.11.2, which has no tarfile.data_filter) and the oldest and newest supported ones found here.
UNPACK = """
import sys
from pathlib import Path
from reductio.worker import archives
from reductio.errors import UserCodeError
try:
    limits = {key: int(value) for key, value in zip(["max_unpacked", "max_members"], sys.argv[2:]) if int(value)}
    folder = archives.unpacked(Path(sys.argv[1]), "model", **limits)
except UserCodeError as err:
    print("refused:", err)
else:
    print("unpacked:", sorted(str(p.relative_to(folder)) for p in folder.rglob("*")))
"""
REPO = Path(__file__).resolve().parent.parent


def _pythons() -> list:
    """The suite's Python, /usr/bin/python3, and the oldest and newest supported on PATH or under pyenv."""
    versions = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    found = {}
    for python in [sys.executable, "/usr/bin/python3", shutil.which("python3.9"), shutil.which("python3.13"),
                   *sorted(map(str, versions.glob("3.9*/bin/python3"))),
                   *sorted(map(str, versions.glob("3.13*/bin/python3")))]:
        if python and os.path.exists(python):
            version = subprocess.run([python, "-c", "import sys, tarfile; print(sys.version.split()[0],"
                                      " hasattr(tarfile, 'data_filter'))"], capture_output=True, text=True,
                                     timeout=60).stdout.split()
            if version:
                found.setdefault(version[0], pytest.param(python, id=f"{version[0]}-data_filter-{version[1]}"))
    return list(found.values())


PYTHONS = _pythons()  # each test below runs on every one of them


def unpack_with(python: str, path: Path, max_unpacked: int = 0, max_members: int = 0) -> str:
    """What ``archives.unpacked`` says of ``path`` when ``python`` runs it: "refused: ..." or "unpacked: [...]"."""
    done = subprocess.run([python, "-c", UNPACK, str(path), str(max_unpacked), str(max_members)],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def evil_tar(path: Path, members: list) -> Path:
    """A tar of (name, link target or None, text) members: a symbolic link, or a file holding the text; a link
    target starting with '=' makes a hard link."""
    with tarfile.open(path, "w") as tar:
        for name, link, text in members:
            info = tarfile.TarInfo(name)
            data = (text or "").encode()
            if link and link.startswith("="):
                info.type, info.linkname = tarfile.LNKTYPE, link[1:]
            elif link:
                info.type, info.linkname = tarfile.SYMTYPE, link
            elif name.endswith("/"):
                info.type = tarfile.DIRTYPE
            else:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


@pytest.fixture
def shipped(tmp_path) -> Path:
    """HOME/shipped, two folders down, so an escape one or two levels up lands in this test's own folders."""
    folder = tmp_path / "home" / "sub" / "shipped"
    folder.mkdir(parents=True)
    return folder


def assert_nothing_written_outside(shipped: Path, archive: Path) -> None:
    tmp = shipped.parent.parent.parent
    outside = [p for p in tmp.rglob("*") if shipped not in p.parents and p != shipped and p not in shipped.parents
               and "work" not in p.relative_to(tmp).parts[:1]]
    assert outside == [], outside
    assert sorted(p.name for p in shipped.iterdir()) == [archive.name]  # nothing unpacked, nothing left over


@pytest.mark.parametrize("python", PYTHONS)
def test_a_chain_of_links_each_looking_inside_cannot_write_outside(shipped, python):
    archive = evil_tar(shipped / "digest", [("s", ".", None), ("e1", "s/..", None), ("e1/s", ".", None),
                                            ("e2", "e1/s/..", None), ("e2/ESCAPED.txt", None, "out\n")])
    assert unpack_with(python, archive).startswith("refused: archive 'model' holds 'e1', a link to 's/..' outside")
    assert_nothing_written_outside(shipped, archive)


@pytest.mark.parametrize("python", PYTHONS)
def test_a_link_made_to_lead_outside_by_a_later_link_is_refused(shipped, python):
    archive = evil_tar(shipped / "digest", [("x", "y/..", None), ("y", ".", None)])
    assert unpack_with(python, archive) == "refused: archive 'model' holds 'x', a link to 'y/..', which leads" \
                                           " outside its folder"
    assert_nothing_written_outside(shipped, archive)


@pytest.mark.parametrize("python", PYTHONS)
def test_an_archive_in_the_style_of_cve_2025_4517_cannot_write_outside(shipped, python):
    """One-letter links to folders with names so long that the path they resolve to passes PATH_MAX, where
    os.path.realpath (and so tarfile's data filter) stops following links and reads the rest as text; past
    that point, the chain of links that each look inside climbs out of the folder."""
    long_name = "d" * 247
    members, path = [], ""
    for step in "abcdefghijklmnop":
        members += [(f"{path}{long_name}/", None, None), (f"{path}{step}", long_name, None)]
        path += f"{long_name}/"
    deep = "/".join("abcdefghijklmnop") + "/" + "l" * 254  # 17 folders down, named in 286 characters
    members += [(deep + "/", None, None), (f"{deep}/s", ".", None), (f"{deep}/e1", "s/..", None)]
    for climbed in range(2, 20):  # e<N> is N folders up: out of the folder at 18, out of shipped/ at 19
        members += [(f"{deep}/e{climbed - 1}/s", ".", None), (f"{deep}/e{climbed}", f"e{climbed - 1}/s/..", None)]
    members.append((f"{deep}/e19/ESCAPED.txt", None, "out\n"))
    archive = evil_tar(shipped / "digest", members)
    said = unpack_with(python, archive)  # too long a path to make, or a link that leads outside
    assert said.startswith("refused: archive 'model' "), said
    assert_nothing_written_outside(shipped, archive)


@pytest.mark.parametrize("python", PYTHONS)
def test_links_and_hard_links_that_stay_inside_are_unpacked_as_links(shipped, python):
    archive = evil_tar(shipped / "digest", [("lib/", None, None), ("lib/real.txt", None, "real\n"),
                                            ("bin/", None, None), ("bin/link.txt", "../lib/real.txt", None),
                                            ("same.txt", "=lib/real.txt", None), ("here", ".", None),
                                            ("here/again.txt", None, "again\n")])
    assert unpack_with(python, archive) == "unpacked: ['again.txt', 'bin', 'bin/link.txt', 'here', 'lib'," \
                                           " 'lib/real.txt', 'same.txt']"
    folder = shipped / "digest.unpacked"
    assert (folder / "bin" / "link.txt").read_text() == (folder / "same.txt").read_text() == "real\n"
    assert os.readlink(folder / "bin" / "link.txt") == "../lib/real.txt"


@pytest.mark.parametrize("python", PYTHONS)
def test_a_zip_bomb_is_refused_naming_the_archive_before_it_fills_the_disk(shipped, python):
    archive = shipped / "digest"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bomb:
        with bomb.open("zeros", "w", force_zip64=True) as zeros:
            block = bytes(1 << 20)
            for _ in range(1100):
                zeros.write(block)
    assert archive.stat().st_size < 1.5 * (1 << 20)
    said = unpack_with(python, archive)
    assert said == "refused: archive 'model' unpacks to more than 1,073,741,824 bytes (max_unpacked); refused"
    assert_nothing_written_outside(shipped, archive)


def test_unpacked_bytes_and_members_are_bounded_by_the_settings_for_tar_and_zip(shipped):
    for kind, make in [("tar", tar_gz), ("zip", zipped)]:
        archive = make(shipped / "digest", {f"f{i}.txt": "x" * 100 for i in range(10)})
        assert unpack_with(sys.executable, archive, max_unpacked=999) == \
            "refused: archive 'model' unpacks to more than 999 bytes (max_unpacked); refused", kind
        assert unpack_with(sys.executable, archive, max_members=9) == \
            "refused: archive 'model' holds more than 9 members (max_members); refused", kind
        assert unpack_with(sys.executable, archive, max_unpacked=1000, max_members=10).startswith("unpacked:")
        shutil.rmtree(shipped / "digest.unpacked")


def test_a_tar_whose_header_understates_its_file_is_bounded_by_what_it_writes(shipped):
    """A zip member's data can claim less than it unpacks to: bytes are counted as they are written."""
    archive = shipped / "digest"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as made:
        made.writestr("big.txt", "x" * 5000)
    data = bytearray(archive.read_bytes())
    for header in (b"PK\x03\x04", b"PK\x01\x02"):  # the sizes in the local header and in the central directory
        at = data.find(header)
        offset = at + (22 if header == b"PK\x03\x04" else 24)
        data[offset:offset + 4] = (10).to_bytes(4, "little")
    archive.write_bytes(bytes(data))
    said = unpack_with(sys.executable, archive, max_unpacked=1000)
    assert said.startswith("refused: archive 'model'"), said


def test_the_max_unpacked_and_max_members_settings_reach_the_workers(c, tmp_path):
    tasks.load(c, str(write_lines(tmp_path / "in.txt", ["a"])), "words")
    model = tar_gz(tmp_path / "model.tar.gz", {"a.txt": "x" * 100, "b.txt": "y" * 100})
    with pytest.raises(Exit, match=r"archive 'model' unpacks to more than 150 bytes \(max_unpacked\); refused"):
        tasks.map(make_context(2, max_unpacked="150"), "| cat", "words", "out", archives=[f"{model}#model"])
    with pytest.raises(Exit, match=r"archive 'model' holds more than 1 members \(max_members\); refused"):
        tasks.map(make_context(2, max_members=1), "| cat", "words", "out", archives=[f"{model}#model"])
    within = make_context(2, max_unpacked="200", max_members=2)
    tasks.map(within, "| cat", "words", "out", archives=[f"{model}#model"])
    tasks.merge(within, "out", str(tmp_path / "out.txt"))
    assert (tmp_path / "out.txt").read_text() == "a\n"
