"""Several processes per worker: shares cut at lines (and keys), and a job that gives the same answer."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from invoke import Exit

from conftest import fabric_context, files_per_dataset, make_context, write_lines
from oracles import count_table, merged_lines, split_words, word_counts
from reductio import tasks
from reductio.errors import ConfigError, InputError
from reductio.head.cluster import Cluster
from reductio.head.config import read_workers_cfg
from reductio.wire.records import read_lines
from reductio.worker.shares import MIN_SHARE, cut


def _bytes_of(share):
    return b"".join(path.read_bytes()[start:end] for path, start, end in share)


def test_shares_cover_every_byte_once_and_cut_only_at_line_starts(tmp_path):
    random.seed(3)
    files = []
    for n, lines in enumerate((40_000, 0, 90_000, 7)):
        ends = ["\n", "\r\n"]  # a CR is an ordinary character
        text = "".join(f"{random.random()}\t{random.choice('xé€𝄞') * random.randint(0, 40)}{random.choice(ends)}"
                       for _ in range(lines))
        files.append(tmp_path / f"f{n}")
        files[-1].write_bytes(text.encode("utf-8").rstrip(b"\n"))  # multi-byte letters; the last line has no LF
    shares = cut(files, 4)
    assert len(shares) == 4
    assert b"".join(_bytes_of(share) for share in shares) == b"".join(path.read_bytes() for path in files)
    for share in shares:
        for path, start, _ in share:
            assert start == 0 or path.read_bytes()[start - 1:start] == b"\n"
    sizes = [len(_bytes_of(share)) for share in shares]
    assert max(sizes) - min(sizes) < 400  # equal, give or take a line


def test_small_input_stays_in_one_process(tmp_path):
    path = write_lines(tmp_path / "f", ["a\t1"] * 1000)
    assert cut([path], 8) == [[(path, 0, path.stat().st_size)]]
    assert MIN_SHARE > path.stat().st_size


def test_sorted_input_is_cut_between_keys_never_inside_one(tmp_path):
    random.seed(4)
    keys = sorted(f"k{random.randint(0, 3000):05d}" for _ in range(400_000))
    path = write_lines(tmp_path / "sorted", (f"{key}\t1" for key in keys))
    shares = cut([path], 3, by_key=True)
    assert len(shares) == 3
    seen = [{line.partition("\t")[0] for line in read_lines(p, start, end)} for (p, start, end), in shares]
    assert sum(len(s) for s in seen) == len(set(keys))  # no key in two shares
    assert b"".join(_bytes_of(share) for share in shares) == path.read_bytes()


def test_one_key_bigger_than_a_share_stays_whole(tmp_path):
    path = write_lines(tmp_path / "sorted", ["a\t1"] * 10 + ["big\t" + "v" * 50] * 80_000 + ["z\t1"] * 10)
    assert path.stat().st_size // MIN_SHARE == 4
    shares = cut([path], 4, by_key=True)
    assert len(shares) == 2  # the cuts a quarter and half-way in found no other key within a share's bytes
    assert b"".join(_bytes_of(share) for share in shares) == path.read_bytes()
    holding = [share for share in shares if b"big\t" in _bytes_of(share)]
    assert len(holding) == 1


def test_unsorted_lines_at_a_cut_are_refused_with_their_line_number(tmp_path):
    lines = [f"k{i:07d}\t1" for i in range(300_000)]
    lines[150_000], lines[150_001] = "k9\t1", "k0\t1"  # out of order near the middle, where a cut falls
    path = write_lines(tmp_path / "sorted", lines)
    with pytest.raises(InputError, match=r"sorted line 150002: input is not sorted"):
        cut([path], 2, by_key=True)


def _wordcount(c, source, output, combine=""):
    tasks.setup(c)
    tasks.load(c, str(source), "text", force=True)
    tasks.map(c, "wordjobs.words", "text", "pairs", combine=combine, force=True)
    tasks.scatter(c, "pairs", "here", force=True)
    tasks.sort(c, "here", "sorted", force=True)
    tasks.reduce(c, "wordjobs.total", "sorted", "counts", force=True)
    tasks.merge(c, "counts", str(output))
    return output.read_bytes()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """About 3.5 MB of words: enough for three shares of map and of reduce."""
    random.seed(5)
    lines = [" ".join(f"w{random.randint(0, 5000)}" for _ in range(10)) for _ in range(60_000)]
    return write_lines(tmp_path_factory.mktemp("corpus") / "in.txt", lines)


@pytest.mark.parametrize("combine", ["", "wordjobs.total"])
def test_a_job_over_three_processes_per_worker_gives_the_one_process_answer(corpus, tmp_path, capsys, combine):
    alone = _wordcount(make_context(1, processes=1), corpus, tmp_path / "one.tsv", combine)
    c = make_context(1, processes=3)
    shared = _wordcount(c, corpus, tmp_path / "three.tsv", combine)
    assert shared == alone
    assert merged_lines(tmp_path / "three.tsv") == count_table(word_counts(corpus.read_text().splitlines()))
    out = capsys.readouterr().out
    totals = [row.split() for row in out.splitlines() if row.strip().startswith("total")]
    map_total, reduce_total = totals[-4], totals[-1]  # the second run's: map, scatter, sort, reduce
    assert int(map_total[1].replace(",", "")) == 60_000  # map's processes read every line once
    assert int(reduce_total[1].replace(",", "")) == (600_000 if not combine else int(map_total[2].replace(",", "")))
    files = files_per_dataset(c, capsys)
    assert files["pairs"] == 3  # map ran as three processes
    assert files["counts"] == (3 if not combine else 1)  # and reduce too, unless combined below MIN_SHARE


def test_user_counters_are_added_up_over_the_processes(corpus, capsys):
    c = make_context(1, processes=3)
    tasks.setup(c)
    tasks.load(c, str(corpus), "text")
    capsys.readouterr()
    tasks.map(c, "wordjobs.counted_words", "text", "pairs")
    out = capsys.readouterr().out
    assert "records: 60,000" in out
    assert files_per_dataset(c, capsys)["pairs"] == 3


def test_transform_over_three_processes_gives_the_one_process_answer(corpus, tmp_path, capsys):
    answers = []
    for processes in (1, 3):
        c = make_context(1, processes=processes)
        tasks.setup(c)
        tasks.load(c, str(corpus), "text")
        tasks.transform(c, "wordjobs.split_words", "text", "split", force=True)
        tasks.merge(c, "split", str(tmp_path / f"{processes}.txt"))
        answers.append((tmp_path / f"{processes}.txt").read_bytes())
        assert files_per_dataset(c, capsys)["split"] == processes
    assert answers[0] == answers[1] and answers[0].count(b"raw:") == 60_000
    assert merged_lines(tmp_path / "3.txt") == split_words(corpus.read_text().splitlines())


def test_an_error_in_a_later_share_names_the_line_of_the_whole_file(corpus, tmp_path):
    lines = corpus.read_text().splitlines()
    lines[50_000] = "boom"
    source = write_lines(tmp_path / "boom.txt", lines)
    c = make_context(1, processes=3)
    tasks.setup(c)
    tasks.load(c, str(source), "text")
    with pytest.raises(Exit) as stopped:
        tasks.map(c, "wordjobs.raises_on_boom", "text", "out")
    message = stopped.value.message
    assert "line 50001" in message and "no booms allowed" in message
    assert message.count("s00000.load line") == 1  # one error, reported once


def test_processes_is_a_whole_number_per_worker_or_for_all(tmp_path):
    cfg = tmp_path / "workers.cfg"
    cfg.write_text("[a]\nlocal = yes\nprocesses = 4\n\n[b]\nhost = h\n")
    a, b = read_workers_cfg(cfg)
    assert (a.processes, b.processes) == (4, None)
    cfg.write_text("[a]\nlocal = yes\nprocesses = none\n")
    with pytest.raises(ConfigError, match="processes must be a whole number"):
        read_workers_cfg(cfg)
    with pytest.raises(Exit, match="reductio.processes must be at least 1"):  # refused before any step runs
        tasks.setup(make_context(1, processes=0))


def test_workers_on_one_machine_split_its_cores():
    cluster = Cluster.from_context(make_context(3))
    assert [cluster.sharing(worker) for worker in cluster.workers] == [3, 3, 3]


def test_workers_named_by_ssh_config_aliases_of_one_machine_split_its_cores(isolated_home):
    """Names as ~/.ssh/config resolves them, as the head logs in: two aliases of one address are one machine,
    an SSH worker on loopback shares this machine with the local ones, another address is a machine of its
    own. No connection is made: the addresses are literal."""
    ssh = isolated_home / ".ssh"
    ssh.mkdir(mode=0o700)
    (ssh / "config").write_text("Host box-a\n    HostName 198.18.77.2\nHost box-b\n    HostName 198.18.77.2\n")
    Path("workers.cfg").write_text("[here]\nlocal = yes\n\n[loop]\nhost = localhost\n\n[a]\nhost = box-a\n\n"
                                   "[b]\nhost = box-b\nhome = ~/.reductio-b\n\n[other]\nhost = 198.18.77.3\n")
    cluster = Cluster.from_context(fabric_context())
    assert {worker.name: cluster.sharing(worker) for worker in cluster.workers} == {
        "here": 2, "loop": 2, "a": 2, "b": 2, "other": 1}
