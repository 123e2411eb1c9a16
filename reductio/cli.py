"""The ``reductio`` program: ``fab`` with the original's spelling.

    reductio -f mymodule setup do_stuff
    reductio -f path/to/fabfile.py setup do_stuff

``-f/--fabfile`` names the task module, as a module name found from the
current folder upwards (like ``fab -c``) or as a path to a .py file. invoke's
own ``-f`` (``--config``) keeps its long name. ``-H host1,user@host2:2222``
makes those hosts the cluster for this run; ``--force`` redoes every step
even when its target is up to date. Tasks answer to their Python names
(``do_stuff``, ``sort_unique``) as well as invoke's dashed ones.
"""

from __future__ import annotations

import os
import shlex
import sys

from fabric import Config, Executor
from fabric.main import Fab
from invoke import Argument, Exit, ParseError
from invoke.parser import Parser

from reductio import __version__
from reductio.config import workers_from_hosts
from reductio.errors import ConfigError


class Reductio(Fab):
    """Fab whose -f is the fabfile."""

    def core_args(self):
        args = super().core_args()
        for arg in args:
            if arg.name == "config":
                arg.names = ("config",)
                arg.help = "Runtime configuration file to use."
        return args + [
            Argument(names=("fabfile", "f"), help="Task module: a module name, or a path to a .py file."),
            Argument(names=("force",), kind=bool, help="Redo every step, even those whose targets are up to date."),
        ]

    def update_config(self):
        """``-H`` names the cluster's workers; it does not run each task once per host as in fab."""
        super().update_config()
        if self.args.force.value:
            self.config._overrides.setdefault("reductio", {})["force"] = True
            self.config.merge()
        hosts = self.args.hosts.value
        if hosts:
            try:
                workers = workers_from_hosts(hosts)
            except ConfigError as err:
                raise Exit(f"reductio: {err}", code=1) from None
            self.config._overrides.setdefault("reductio", {})["workers"] = workers
            self.config.merge()
            self.args.hosts.set_value(None, cast=False)

    def load_collection(self):
        fabfile = self.args.fabfile.value
        if fabfile:
            if fabfile.endswith(".py") or os.sep in fabfile:
                path = os.path.abspath(fabfile)
                self.args["search-root"].value = os.path.dirname(path)
                fabfile = os.path.basename(path)
                if fabfile.endswith(".py"):
                    fabfile = fabfile[:-3]
            self.args.collection.value = fabfile
        super().load_collection()

    def parse_tasks(self):
        """invoke casts a task option's value to its default's type; one that does not cast is a usage error."""
        try:
            super().parse_tasks()
        except ValueError as err:
            raise ParseError(f"reductio: a task option's value is of the wrong kind ({err});"
                             " see reductio --help TASK") from None

    def _make_parser(self) -> Parser:
        """Accept a task's Python name too: ``do_stuff`` as well as invoke's ``do-stuff``."""
        contexts = self.collection.to_contexts(ignore_unknown_help=self.config.tasks.ignore_unknown_help)
        for context in contexts:
            underscored = context.name.replace("-", "_")
            if underscored != context.name:
                context.aliases = (*context.aliases, underscored)
        return Parser(initial=self.initial_context, contexts=contexts)


    def run(self, argv=None, exit=True):
        """``reductio mrjob JOB.py [its options] INPUT... --output DIR``: all after ``mrjob`` is the job's own
        command line, but ``--output`` and ``--cat-output``, which are ours."""
        argv = list(sys.argv if argv is None else (shlex.split(argv) if isinstance(argv, str) else argv))
        return super().run(_job_line(argv, self._valued()), exit)

    def _valued(self) -> set:
        """The core options that take a value (so the word after one is not a task)."""
        return {f"-{name}" if len(name) == 1 else f"--{name}"
                for arg in self.core_args() if arg.takes_value for name in arg.names}


def _job_line(argv: list, valued: set) -> list:
    """argv with what follows the ``mrjob`` task folded into its ``--job`` option."""
    position = 1
    while position < len(argv):
        word = argv[position]
        if word == "mrjob":
            break
        position += 2 if word in valued else 1
    else:
        return argv
    job, ours = [], []
    rest = iter(argv[position + 1:])
    for word in rest:
        if word == "--output":
            ours += ["--output", next(rest, "")]
        elif word.startswith("--output="):
            ours += ["--output", word[len("--output="):]]
        elif word == "--cat-output":
            ours.append("--cat-output")
        else:
            job.append(word)
    return argv[:position + 1] + (["--job", shlex.join(job)] if job else []) + ours


def make_program() -> Reductio:
    return Reductio(name="reductio", binary="reductio", version=__version__,
                    executor_class=Executor, config_class=Config)


program = make_program()
