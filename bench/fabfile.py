"""reductio's side of the benchmark: the two workloads as a user would write them."""

from fabric import task

from reductio.tasks import *  # noqa: F401,F403
from reductio.tasks import load, map, merge, reduce, scatter, sort


@task
def job(c, corpus, output, mapper="jobs.line_bigrams", reducer="reductio.reducers.sum", combine=False):
    """load -> map -> scatter -> sort -> reduce -> merge, optionally with ``reducer`` as the combiner too."""
    load(c, corpus, "corpus")
    map(c, mapper, "corpus", "pairs", combine=reducer if combine else "")
    scatter(c, "pairs", "here")
    sort(c, "here", "sorted")
    reduce(c, reducer, "sorted", "counts")
    merge(c, "counts", output)
