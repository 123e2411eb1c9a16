"""Letter bigram counts over the words file, written as a reductio user would.

    reductio -f reductio/example/fabfile.py setup bigrams
    reductio -f reductio/example/fabfile.py bigrams --words /path/to/words --output table.tsv
"""

import os

from fabric import task
from invoke import Exit

from reductio.tasks import *  # noqa: F401,F403 - setup, load, map, scatter, sort, reduce, merge, ...
from reductio.tasks import load, map, merge, reduce, scatter, sort  # noqa: A004 - explicit for readers

WORDS = "/usr/share/dict/words"
SAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sample-words.txt")


def words_file(words):
    """The words file to count; without one, the bundled sample, with a notice saying how to get it."""
    if words:
        return words
    if os.path.exists(WORDS):
        return WORDS
    print(f"bigrams: no {WORDS} here (Debian/Ubuntu: apt-get install wamerican);"
          f" counting the bundled sample {SAMPLE} instead")
    return SAMPLE


@task(help={"words": f"the words file, one word per line (default {WORDS}, else a bundled sample)",
            "output": "where to write the table (default bigrams.tsv)",
            "top": "how many of the most frequent bigrams to print",
            "combine": "pre-aggregate counts on each worker before the scatter (a combiner)"})
def bigrams(c, words="", output="bigrams.tsv", top=10, combine=False):
    """Count letter bigrams in the words file into a key<TAB>count table on the head."""
    if int(top) < 0:
        raise Exit(f"bigrams: --top is how many bigrams to print, 0 or more, not {top}")
    load(c, words_file(words), "words")
    map(c, "reductio.example.bigrams.letter_pairs", "words", "pairs",
        combine="reductio.reducers.sum" if combine else "")
    scatter(c, "pairs", "pairs-here")
    sort(c, "pairs-here", "pairs-sorted")
    reduce(c, "reductio.reducers.sum", "pairs-sorted", "counts")
    merge(c, "counts", output)
    if c.config.run.dry:  # -R: the commands were printed, nothing ran
        return
    with open(output, encoding="utf-8") as table:
        rows = [line.rstrip("\n").split("\t") for line in table]
    rows.sort(key=lambda row: (-int(row[1]), row[0]))
    print(f"{len(rows)} bigrams in {output}; the {min(int(top), len(rows))} most frequent:")
    for bigram, count in rows[: int(top)]:
        print(f"  {bigram}  {count}")
