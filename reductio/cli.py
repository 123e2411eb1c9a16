"""The ``reductio`` program (also ``python -m reductio``): ``fab`` with the original's spelling.

    reductio mrjob mr_job.py input.txt --output out
    reductio -f mymodule setup do_stuff
    reductio -f path/to/fabfile.py setup do_stuff

reductio's own tasks need no fabfile: with none found, the program runs
``reductio.tasks``; beside one, the fabfile's tasks stand with reductio's,
and the fabfile's win a name they share. ``-f/--fabfile`` names the task
module, as a module name found from the current folder upwards (like ``fab
-c``) or as a path to a .py file. invoke's own ``-f`` (``--config``) keeps
its long name. ``-H host1,user@host2:2222`` makes those hosts the cluster for
this run; ``--force`` redoes every step even when its target is up to date,
and after one of reductio's tasks ``-f`` is that task's ``--force``. Tasks
answer to their Python names (``do_stuff``, ``sort_unique``) as well as
invoke's dashed ones.
"""

from __future__ import annotations

import os
import select
import shlex
import signal
import sys

from fabric import Config, Executor
from fabric.main import Fab
from invoke import Argument, Collection, Exit, ParseError, Task
from invoke.exceptions import CollectionNotFound
from invoke.parser import Parser, ParserContext

from reductio import __version__, tasks
from reductio.errors import ConfigError
from reductio.head.config import workers_from_hosts


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
        """The fabfile's tasks beside reductio's own; with no fabfile found (and none named), reductio's alone."""
        if self._remainder_only:  # fab -- COMMAND: no tasks at all
            return super().load_collection()
        fabfile = self.args.fabfile.value
        if fabfile:
            if fabfile.endswith(".py") or os.sep in fabfile:
                path = os.path.abspath(fabfile)
                self.args["search-root"].value = os.path.dirname(path)
                fabfile = os.path.basename(path)
                if fabfile.endswith(".py"):
                    fabfile = fabfile[:-3]
            self.args.collection.value = fabfile
        start = self.args["search-root"].value
        named = self.args.collection.value
        try:
            module, parent = self.loader_class(config=self.config, start=start).load(named)
        except CollectionNotFound as err:
            if named:  # asked for by name: not finding it is an error, not a reason to run something else
                raise Exit(f"reductio: no task module {err.name!r} at or above {start or os.getcwd()}",
                           code=1) from None
            module, parent = None, os.path.abspath(start or os.getcwd())
        self.config.set_project_location(parent)
        self.config.load_project()
        dashed = self.config.tasks.auto_dash_names
        ours = Collection.from_module(tasks, name="reductio", loaded_from=parent, auto_dash_names=dashed)
        if module is None:
            self.collection = ours
            return
        self.collection = Collection.from_module(module, loaded_from=parent, auto_dash_names=dashed)
        for name, task in ours.tasks.items():
            if name not in self.collection.tasks and name not in self.collection.collections:
                self.collection.add_task(task, name=name)

    def parse_tasks(self):
        """invoke casts a task option's value to its default's type; one that does not cast is a usage error."""
        try:
            super().parse_tasks()
        except ValueError as err:
            raise ParseError(f"reductio: a task option's value is of the wrong kind ({err});"
                             " see reductio --help TASK") from None

    def _make_parser(self) -> Parser:
        """Accept a task's Python name too: ``do_stuff`` as well as invoke's ``do-stuff``; in reductio's own
        tasks, ``-f`` is ``--force``."""
        contexts = self.collection.to_contexts(ignore_unknown_help=self.config.tasks.ignore_unknown_help)
        optional = {}
        for position, context in enumerate(contexts):
            if id(self.collection[context.name]) in _OURS:
                context = contexts[position] = _force_is_f(context)
                optional[context.name] = _OPTIONAL_POSITIONALS.get(context.name, ())
            underscored = context.name.replace("-", "_")
            if underscored != context.name:
                context.aliases = (*context.aliases, underscored)
        return _Parser(initial=self.initial_context, contexts=contexts, optional=optional)


    def run(self, argv=None, exit=True):
        """``reductio mrjob JOB.py [its options] INPUT... --output DIR``: all after ``mrjob`` is the job's own
        command line, but ``--output`` and ``--cat-output``, which are ours."""
        argv = list(sys.argv if argv is None else (shlex.split(argv) if isinstance(argv, str) else argv))
        try:
            return super().run(_job_line(argv, self._valued()), exit)
        except BrokenPipeError:
            if not _reader_gone(sys.stdout):
                raise
            # Whoever read our output stopped (reductio status | head): end quietly, as cat and ls do, with
            # the status a shell shows for them (128 + SIGPIPE); stdout goes nowhere so the exit's flush is quiet.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            if exit:
                sys.exit(128 + signal.SIGPIPE)

    def _valued(self) -> set:
        """The core options that take a value (so the word after one is not a task)."""
        return {f"-{name}" if len(name) == 1 else f"--{name}"
                for arg in self.core_args() if arg.takes_value for name in arg.names}


def _reader_gone(stream) -> bool:
    """Whether ``stream`` is a pipe whose reading end was closed (poll says POLLERR for such a pipe)."""
    try:
        poller = select.poll()
        poller.register(stream.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # not a file; closed
        return False


_OURS = {id(task) for task in vars(tasks).values() if isinstance(task, Task)}
# Arguments of reductio's tasks that may be given by position but have a default (invoke's positionals are required).
_OPTIONAL_POSITIONALS = {"report": ("log", "output")}


class _Parser(Parser):
    """invoke's parser, reading ``reductio report job.jsonl out.html`` as ``report --log job.jsonl --output out.html``
    (and ``reductio report`` as the defaults)."""

    def __init__(self, *args, optional: dict, **kwargs):
        super().__init__(*args, **kwargs)
        self.optional = optional

    def parse_argv(self, argv):
        return super().parse_argv(_by_name(argv, self.contexts, self.optional))


def _by_name(argv: list, contexts, optional: dict) -> list:
    """argv with the optional positional arguments of tasks (``optional``: task -> names) given as options."""
    words, context, waiting = [], None, []
    rest = iter(argv)
    for word in rest:
        if word == "--":  # the remainder: not ours to read
            return words + [word, *rest]
        if word in contexts:
            context = contexts[word]
            waiting = list(optional.get(context.name, ()))
            words.append(word)
        elif word.startswith("-") and context is not None:
            flag = context.flags.get(word.split("=")[0])
            words.append(word)
            if flag is not None and flag.takes_value:
                if "=" not in word:
                    words.append(next(rest, ""))
                if flag.name in waiting:
                    waiting.remove(flag.name)
        elif waiting:
            words += [f"--{waiting.pop(0)}", word]
        else:
            words.append(word)
    return words


def _force_is_f(context: ParserContext) -> ParserContext:
    """The context with ``-f`` meaning ``--force`` (invoke gives the first free letter, so ``-f`` was ``--function``
    in map and ``--force`` in sort); a task without ``--force`` has no ``-f``."""
    arguments = list(context.args.values())
    for argument in arguments:
        argument.names = ("force", "f") if argument.name == "force" else tuple(n for n in argument.names if n != "f")
    return ParserContext(name=context.name, aliases=context.aliases, args=arguments)


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
