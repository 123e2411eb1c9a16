"""Archives shipped with a command step: unpacked once per worker, seen by name in the working folder."""

from __future__ import annotations

import io
import multiprocessing
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest
from invoke import Exit

from conftest import make_context, write_lines
from reductio import archives, tasks
from reductio.errors import UserCodeError

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
    return set((tmp_path / f"{target}.tsv").read_text().splitlines())


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
    assert all(folder == path.with_name("digest.d") and seen == expected for folder, seen in results)
    assert sorted(p.name for p in path.parent.iterdir()) == ["digest", "digest.d"]


def test_the_command_line_takes_archives(tmp_path):
    fabfile = tmp_path / "fabfile.py"
    fabfile.write_text("from reductio.tasks import *\n")
    write_lines(tmp_path / "in.txt", ["a"])
    tar_gz(tmp_path / "model.tar.gz", {"v.txt": "one\n"})

    def run(*argv):
        return subprocess.run(["reductio", "-f", str(fabfile), *argv], cwd=tmp_path, capture_output=True, text=True,
                              timeout=120)

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
