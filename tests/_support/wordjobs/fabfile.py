"""A user's fabfile: the reductio tasks plus a job of their own."""

from fabric import task

from reductio.tasks import *  # noqa: F401,F403
from reductio.tasks import load, map, merge, reduce, scatter, sort


@task
def wordcount(c, path, output):
    load(c, path, "text")
    map(c, "wordjobs.words", "text", "pairs")
    scatter(c, "pairs", "mine")
    sort(c, "mine", "grouped")
    reduce(c, "wordjobs.total", "grouped", "counts")
    merge(c, "counts", output)


@task
def pausejob(c, path, output, prefix="a"):
    """A whole job whose map pauses where a test asks; datasets named PREFIX-..."""
    load(c, path, f"{prefix}-input")
    map(c, "wordjobs.pausing", f"{prefix}-input", f"{prefix}-pairs")
    scatter(c, f"{prefix}-pairs", f"{prefix}-here")
    sort(c, f"{prefix}-here", f"{prefix}-sorted")
    reduce(c, "wordjobs.gather", f"{prefix}-sorted", f"{prefix}-gathered")
    merge(c, f"{prefix}-gathered", output)


@task
def anagrams(c, words, output):
    """Classes of words made of the same letters (bench/scatter_scale.py runs it on many workers)."""
    load(c, words, "words")
    map(c, "wordjobs.anagram_key", "words", "keyed")
    scatter(c, "keyed", "here")
    sort(c, "here", "sorted")
    reduce(c, "wordjobs.anagram_class", "sorted", "classes")
    merge(c, "classes", output)
