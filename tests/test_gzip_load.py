"""load of a .gz input: its lines dealt over every worker like a plain file's; a broken one refused in one line."""

from __future__ import annotations

import collections
import gzip
import os
from pathlib import Path

import pytest
from invoke import Exit

from conftest import make_context, write_lines
from reductio import tasks


def shard_lines(name: str) -> dict:
    """Per local worker, the lines of dataset ``name`` it holds."""
    root = Path(os.environ["HOME"]) / ".reductio" / "local"
    held = {}
    for home in sorted(p for p in root.iterdir() if p.is_dir()):
        folder = home / "data" / name
        held[home.name] = [line for path in sorted(folder.iterdir()) if not path.name.startswith("_")
                           for line in path.read_text().splitlines()] if folder.is_dir() else []
    return held


@pytest.mark.parametrize("workers", [2, 3])
def test_a_gz_input_is_dealt_over_every_worker_and_merges_exact(tmp_path, workers):
    c = make_context(workers)
    tasks.setup(c)
    lines = [f"w{i % 97}\t{i}" for i in range(60_000)]  # 700 KB decompressed, far less compressed
    path = tmp_path / "in.txt.gz"
    path.write_bytes(gzip.compress("".join(line + "\n" for line in lines).encode()))
    tasks.load(c, str(path), "text")
    held = shard_lines("text")
    assert len(held) == workers and all(held.values()), {name: len(got) for name, got in held.items()}
    assert collections.Counter(line for got in held.values() for line in got) == collections.Counter(lines)
    tasks.map(c, "wordjobs.identity", "text", "pairs")
    tasks.merge(c, "pairs", str(tmp_path / "out.tsv"))
    assert sorted((tmp_path / "out.tsv").read_text().splitlines()) == sorted(lines)


def corrupt(data: bytes) -> bytes:
    """The same gzip with bytes in the middle of its deflate stream overwritten."""
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0x5A for b in data[middle:middle + 64]) + data[middle + 64:]


@pytest.mark.parametrize("damage", ["corrupt", "cut short", "not gzip"])
def test_a_broken_gz_input_fails_in_one_line_naming_it_and_nothing_is_published(tmp_path, damage):
    c = make_context(2)
    tasks.setup(c)
    whole = gzip.compress("".join(f"k{i}\t{i * 7919 % 10007}\n" for i in range(200_000)).encode())
    path = tmp_path / "in.txt.gz"
    path.write_bytes({"corrupt": corrupt(whole), "cut short": whole[:len(whole) // 2],
                      "not gzip": b"plain text, named .gz\n" * 100}[damage])
    with pytest.raises(Exit) as failure:
        tasks.load(c, str(path), "text")
    message = failure.value.message
    assert "\n" not in message and "Traceback" not in message, message
    assert str(path) in message and "gzip" in message, message
    assert not any(shard_lines("text").values())
    for home in (Path(os.environ["HOME"]) / ".reductio" / "local").iterdir():
        assert list((home / "tmp").iterdir()) == [], f"leftovers in {home.name}/tmp"
    tasks.load(c, str(write_lines(tmp_path / "fine.txt", ["a", "b"])), "text")  # the workers are fine
