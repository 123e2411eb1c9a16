"""Which partition owns a key: the same answer in every process, and where output.py puts a line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib

from reductio.wire.partition import partition_file, partition_of
from reductio.wire.records import format_line, format_record, key_of, read_lines
from reductio.worker.output import PartitionedOutput

KEYS = [
    "", "a", "b", "ab", "a\x01", "the", "quick", "brown", "fox", "Word", "word",
    "\u00fcber", "na\u00efve", "\u65e5\u672c", "\U0001f600", "caf\u00e9", "\r", " ", "x" * 500,
]
COUNTS = [1, 2, 3, 5, 7, 16]

_CHILD = """
import json, sys
from reductio.wire.partition import partition_of
keys = json.loads(sys.argv[1])
print(json.dumps([[partition_of(key, n) for n in %r] for key in keys]))
""" % (COUNTS,)


def _partitions_in_child(seed: str):
    env = dict(os.environ, PYTHONHASHSEED=seed)
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(KEYS)],
        env=env, capture_output=True, text=True, check=True, timeout=60,
    )
    return json.loads(done.stdout)


def test_partition_of_is_the_same_in_processes_with_different_hash_seeds():
    expected = [[partition_of(key, n) for n in COUNTS] for key in KEYS]
    for seed in ("0", "1", "12345", "random"):
        assert _partitions_in_child(seed) == expected, f"PYTHONHASHSEED={seed}"


def test_partition_of_is_crc32_of_the_utf8_bytes_modulo_the_count():
    for key in KEYS:
        for n in COUNTS:
            assert partition_of(key, n) == zlib.crc32(key.encode("utf-8")) % n


def test_partition_of_is_in_range_and_known_for_fixed_keys():
    # Fixed values: CRC-32 is a published function, so these never change.
    assert zlib.crc32(b"") == 0
    assert partition_of("", 7) == 0
    assert zlib.crc32(b"a") == 0xE8B7BE43
    assert partition_of("a", 2) == 0xE8B7BE43 % 2
    assert partition_of("\u00fcber", 5) == zlib.crc32(b"\xc3\xbcber") % 5
    for key in KEYS:
        assert 0 <= partition_of(key, 3) < 3
        assert partition_of(key, 1) == 0


def _lines():
    lines = []
    for i, key in enumerate(KEYS * 3):
        lines.append(format_record((key, f"value {i}\twith tab"), "test"))
    lines.append(format_line("a text line with no tab", "test"))
    lines.append(format_line("\u00fcber text", "test"))
    lines.append(format_line("", "test"))
    return lines


def test_partitioned_output_puts_each_line_in_the_file_partition_of_names(tmp_path):
    for partitions in (1, 2, 3, 5):
        folder = tmp_path / f"n{partitions}"
        folder.mkdir()
        lines = _lines()
        output = PartitionedOutput(folder, partitions, "w0")
        output.write_all(iter(lines))
        facts = output.close()
        assert sorted(facts) == [partition_file(p, "w0") for p in range(partitions)]
        expected = {p: [] for p in range(partitions)}
        for line in lines:
            body = line[:-1]
            expected[partition_of(key_of(body), partitions)].append(body)
        for p in range(partitions):
            path = folder / partition_file(p, "w0")
            assert list(read_lines(path)) == expected[p]
            assert facts[path.name]["lines"] == len(expected[p])
            assert facts[path.name]["bytes"] == path.stat().st_size


def test_partitioned_output_routes_a_batch_larger_than_its_buffer(tmp_path):
    lines = [format_record((f"key{i % 101}", str(i)), "test") for i in range(20000)]
    output = PartitionedOutput(tmp_path, 4, "w1")
    output.write_all(iter(lines))
    facts = output.close()
    for p in range(4):  # every line once, in the order written, though each batch outgrew its room
        path = tmp_path / partition_file(p, "w1")
        got = list(read_lines(path))
        assert got == [line[:-1] for line in lines if partition_of(key_of(line[:-1]), 4) == p]
        assert facts[path.name]["lines"] == len(got)


def test_partitioned_output_calls_a_file_sorted_only_when_its_lines_are_in_sort_order(tmp_path):
    # sort (LC_ALL=C) compares lines without their LF, so "k\tx" sorts before "k\tx\t".
    in_order = ["k\tx\n", "k\tx\t\n"]
    out_of_order = ["k\tx\t\n", "k\tx\n"]
    assert [line[:-1] for line in in_order] == sorted(line[:-1] for line in out_of_order)
    facts = {}
    for origin, lines in (("good", in_order), ("bad", out_of_order)):
        output = PartitionedOutput(tmp_path, 1, origin)
        output.write_all(iter(lines))
        facts.update(output.close())
    assert facts[partition_file(0, "good")]["sorted"] is True
    assert facts[partition_file(0, "bad")]["sorted"] is False
