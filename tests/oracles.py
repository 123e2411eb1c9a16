"""What the tests' jobs compute, worked out in plain Python from their input: the oracles end-to-end results meet.

Each function does a job's logic over the lines the test wrote, with ``collections.Counter`` and ``sorted``,
never through reductio nor through the job's own functions: a run that loses, doubles or mixes up a line, or a
mapper that changed, differs from it. Results are compared as a ``Counter`` of the lines ``merge`` wrote, so a
line written twice or under another key is seen, whatever order the workers' parts came in.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path


def merged_lines(path: Path) -> Counter:
    """The lines of a file ``merge`` wrote, counted."""
    return Counter(Path(path).read_text(encoding="utf-8").splitlines())


def count_table(counts: Counter) -> Counter:
    """The lines ``key<TAB>count`` a counting job writes, one per key, counted."""
    return Counter(f"{key}\t{count}" for key, count in counts.items())


def word_counts(lines) -> Counter:
    """wordjobs.words summed by wordjobs.total (or reductio.reducers.sum): each word of each text line, counted."""
    return Counter(word for line in lines for word in line.split())


def word_pairs(lines) -> Counter:
    """What the map of wordjobs.words writes: ``word<TAB>1`` for each word of each text line."""
    return Counter(f"{word}\t1" for line in lines for word in line.split())


def split_words(lines) -> Counter:
    """What the transform wordjobs.split_words writes: ``word<TAB>1`` per word, then the line as ``raw:line``."""
    return word_pairs(lines) + Counter(f"raw:{line}" for line in lines)


def bigrams(words_lines) -> Counter:
    """The bundled example (README's job too): pairs of adjacent letters in each lowercased word, counted."""
    counts = Counter()
    for word in words_lines:
        word = word.lower()
        counts.update(word[i:i + 2] for i in range(len(word) - 1) if word[i].isalpha() and word[i + 1].isalpha())
    return counts


def records(lines) -> list:
    """The (key, value) pairs of text lines as reductio reads them: the key up to the first tab, all key without."""
    return [tuple(line.split("\t", 1)) if "\t" in line else (line, "") for line in lines]


def gathered(lines) -> Counter:
    """wordjobs.gather over the records of ``lines``: per key, ``key<TAB>count<TAB>`` the values sorted."""
    values = {}
    for key, value in records(lines):
        values.setdefault(key, []).append(value)
    return Counter("\t".join([key, str(len(got)), *sorted(got)]) for key, got in values.items())
