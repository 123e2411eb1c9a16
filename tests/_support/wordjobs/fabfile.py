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
