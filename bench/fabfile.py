"""reductio's side of the benchmark: the two workloads as a user would write them."""

from fabric import task

from reductio.tasks import *  # noqa: F401,F403
from reductio.tasks import load, map, merge, reduce, scatter, sort


@task
def job(c, corpus, output, mapper="jobs.line_bigrams", combine=False):
    """load -> map -> scatter -> sort -> reduce -> merge, optionally with a combiner."""
    load(c, corpus, "corpus")
    map(c, mapper, "corpus", "pairs", combine="jobs.count" if combine else "")
    scatter(c, "pairs", "here")
    sort(c, "here", "sorted")
    reduce(c, "jobs.count", "sorted", "counts")
    merge(c, "counts", output)
