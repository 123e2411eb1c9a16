"""The project's own fabfile: the bundled bigram example, runnable from the repository root.

    reductio -f fabfile.py setup bigrams
"""

from reductio.example.fabfile import *  # noqa: F401,F403 - the task library and the bigrams task
