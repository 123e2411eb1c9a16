""""Up to date" means the code is the same: the code digest covers the code that actually runs.

Each test makes a small project of its own, runs a step through the real
tasks on local workers, edits the project as a user would, and runs the
step again: it must run (and give the new output) or be skipped (when
nothing that runs changed).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from conftest import make_context, write_lines
from reductio import tasks
from reductio.wire.usercode import UNKNOWN, code_digest, unknown_code


@pytest.fixture(autouse=True)
def no_bytecode(monkeypatch):
    """Edits below keep a file's size and may land in the same second: a cached .pyc must not hide them."""
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")


def project(folder: Path, **modules: str) -> Path:
    """Write (or rewrite) the project's modules: name -> source."""
    folder.mkdir(exist_ok=True)
    for name, source in modules.items():
        (folder / f"{name}.py").write_text(textwrap.dedent(source))
    return folder


def mapped(c, tmp_path: Path, function: str, capsys, combine: str = "") -> tuple[set, str]:
    """The map's output lines and what the task printed."""
    capsys.readouterr()
    tasks.map(c, function, "words", "pairs", combine=combine)
    printed = capsys.readouterr().out
    tasks.merge(c, "pairs", str(tmp_path / "pairs.tsv"))
    capsys.readouterr()
    lines = (tmp_path / "pairs.tsv").read_text().splitlines()
    assert len(set(lines)) == len(lines), lines  # each input word's pair once: the set the tests compare hides twins
    return set(lines), printed


@pytest.fixture
def start(tmp_path):
    """A two-worker context for a fresh project folder holding ``modules``, with the words ``a b`` loaded."""

    def begin(**modules):
        folder = project(tmp_path / "project", **modules)
        c = make_context(2, project=folder)
        tasks.setup(c)
        tasks.load(c, str(write_lines(tmp_path / "in.txt", ["a", "b"])), "words")
        return c, folder

    return begin


def test_a_mapper_wrapped_by_a_decorator_of_another_module_is_redone_when_its_own_module_changes(
        start, tmp_path, capsys):
    deco = """
        def logged(function):
            def run(key, value):  # no functools.wraps
                return function(key, value)
            return run
    """
    jobs = """
        from deco import logged

        @logged
        def mapper(key, value):
            yield key.{0}(), "1"
    """
    c, folder = start(deco=deco, jobs=jobs.format("upper"))
    assert mapped(c, tmp_path, "jobs.mapper", capsys)[0] == {"A\t1", "B\t1"}
    assert "up to date" in mapped(c, tmp_path, "jobs.mapper", capsys)[1]  # unchanged: skipped
    project(folder, jobs=jobs.format("lower"))
    lines, printed = mapped(c, tmp_path, "jobs.mapper", capsys)
    assert "up to date" not in printed and lines == {"a\t1", "b\t1"}


def test_a_partial_is_redone_when_the_module_making_it_changes(start, tmp_path, capsys):
    jobs = """
        import functools

        def change(how, key, value):
            yield how(key), "1"

        mapper = functools.partial(change, str.{0})
    """
    c, folder = start(jobs=jobs.format("upper"))
    assert mapped(c, tmp_path, "jobs.mapper", capsys)[0] == {"A\t1", "B\t1"}
    assert "up to date" in mapped(c, tmp_path, "jobs.mapper", capsys)[1]
    project(folder, jobs=jobs.format("lower"))
    lines, printed = mapped(c, tmp_path, "jobs.mapper", capsys)
    assert "up to date" not in printed and lines == {"a\t1", "b\t1"}


def test_a_function_imported_under_another_name_is_redone_when_the_import_changes(start, tmp_path, capsys):
    helpers = """
        def upper(key, value):
            yield key.upper(), "1"

        def lower(key, value):
            yield key.lower(), "1"
    """
    c, folder = start(helpers=helpers, jobs="from helpers import upper as mapper\n")
    assert mapped(c, tmp_path, "jobs.mapper", capsys)[0] == {"A\t1", "B\t1"}
    assert "up to date" in mapped(c, tmp_path, "jobs.mapper", capsys)[1]
    project(folder, jobs="from helpers import lower as mapper\n")
    lines, printed = mapped(c, tmp_path, "jobs.mapper", capsys)
    assert "up to date" not in printed and lines == {"a\t1", "b\t1"}


def test_a_step_is_redone_when_a_helper_module_of_the_project_changes(start, tmp_path, capsys):
    helpers = """
        import text

        def change(word):
            return text.{0}(word)
    """
    text = """
        def shout(word):
            return word.{0}()

        def whisper(word):
            return word.lower()
    """
    jobs = """
        import helpers

        def mapper(key, value):
            yield helpers.change(key), "1"
    """
    c, folder = start(text=text.format("upper"), helpers=helpers.format("shout"), jobs=jobs)
    assert mapped(c, tmp_path, "jobs.mapper", capsys)[0] == {"A\t1", "B\t1"}
    project(folder, helpers=helpers.format("whisper"))  # a module the mapper's module imports
    lines, printed = mapped(c, tmp_path, "jobs.mapper", capsys)
    assert "up to date" not in printed and lines == {"a\t1", "b\t1"}
    project(folder, helpers=helpers.format("shout"), text=text.format("title"))  # one that module imports
    lines, printed = mapped(c, tmp_path, "jobs.mapper", capsys)
    assert "up to date" not in printed and lines == {"A\t1", "B\t1"}
    assert "up to date" in mapped(c, tmp_path, "jobs.mapper", capsys)[1]


def test_a_map_is_redone_when_its_combiner_behind_a_decorator_changes(start, tmp_path, capsys):
    deco = """
        def checked(function):
            def run(key, values):
                return function(key, values)
            return run
    """
    maps = """
        def mapper(key, value):
            if key == "a":
                yield "k", "1"
                yield "k", "2"
    """
    combiners = """
        from deco import checked

        @checked
        def combine(key, values):
            yield key, str({0}(int(v) for v in values))
    """
    c, folder = start(deco=deco, maps=maps, combiners=combiners.format("sum"))
    assert mapped(c, tmp_path, "maps.mapper", capsys, "combiners.combine")[0] == {"k\t3"}
    assert "up to date" in mapped(c, tmp_path, "maps.mapper", capsys, "combiners.combine")[1]
    project(folder, combiners=combiners.format("max"))
    lines, printed = mapped(c, tmp_path, "maps.mapper", capsys, "combiners.combine")
    assert "up to date" not in printed and lines == {"k\t2"}


def test_a_reducer_made_by_a_partial_is_redone_when_it_changes(start, tmp_path, capsys):
    jobs = """
        import functools

        def pick(how, key, values):
            yield key, how(values)

        reducer = functools.partial(pick, {0})
    """
    c, folder = start(jobs=jobs.format("min"), pairs="def mapper(key, value):\n    yield 'k', key\n")
    tasks.map(c, "pairs.mapper", "words", "pairs")
    tasks.sort(c, "pairs", "sorted")
    tasks.reduce(c, "jobs.reducer", "sorted", "out")
    tasks.merge(c, "out", str(tmp_path / "out.tsv"))
    assert (tmp_path / "out.tsv").read_text() == "k\ta\n"
    capsys.readouterr()
    tasks.reduce(c, "jobs.reducer", "sorted", "out")
    assert "reduce: out is up to date" in capsys.readouterr().out
    project(folder, jobs=jobs.format("max"))
    tasks.reduce(c, "jobs.reducer", "sorted", "out")
    assert "up to date" not in capsys.readouterr().out
    tasks.merge(c, "out", str(tmp_path / "out.tsv"))
    assert (tmp_path / "out.tsv").read_text() == "k\tb\n"


def test_code_with_no_source_file_runs_every_time_saying_why(start, tmp_path, capsys):
    jobs = """
        exec("def mapper(key, value):\\n    yield key, 'seen'\\n")
    """
    c, _ = start(jobs=jobs)
    assert mapped(c, tmp_path, "jobs.mapper", capsys)[0] == {"a\tseen", "b\tseen"}
    lines, printed = mapped(c, tmp_path, "jobs.mapper", capsys)
    assert "up to date" not in printed
    assert "map: cannot tell whether the code changed (jobs.mapper runs code of jobs that has no source file" \
        in printed, printed


def test_the_digest_names_files_by_module_so_two_copies_of_a_project_agree(tmp_path, monkeypatch):
    """A local worker imports the project's folder, an SSH worker its installed copy: the same code, one digest."""
    import sys

    source = "import helper\n\ndef mapper(key, value):\n    yield helper.f(key), '1'\n"
    digests = []
    for copy in ("one", "two"):
        folder = project(tmp_path / copy, digestjobs=source, helper="def f(word):\n    return word\n")
        monkeypatch.syspath_prepend(str(folder))
        digests.append(code_digest(["digestjobs.mapper"]))
        del sys.modules["digestjobs"], sys.modules["helper"]
        sys.path.remove(str(folder))
    assert digests[0] == digests[1] and unknown_code(digests[0]) is None


def test_python_s_own_functions_are_known_and_compiled_code_of_others_is_not(tmp_path, monkeypatch):
    project(tmp_path, builtinjobs="import operator\nlength = len\nitem = operator.itemgetter(0)\n",
            compiledjobs="from bcrypt import hashpw as mapper\n")  # bcrypt: a C extension paramiko brings
    monkeypatch.syspath_prepend(str(tmp_path))
    assert unknown_code(code_digest(["builtinjobs.length", "builtinjobs.item"])) is None
    code = code_digest(["compiledjobs.mapper"])
    assert code.startswith(UNKNOWN) and unknown_code(code) == (
        "compiledjobs.mapper runs compiled code (builtin_function_or_method hashpw) whose changes reductio cannot see")


def test_modules_of_other_installed_distributions_are_not_the_project_s(tmp_path, monkeypatch):
    """A dependency (here yaml, in site-packages) has its own version: a worker's copy of it is not the project's
    code, so it is neither read nor followed; the project's own helper is."""
    from reductio.wire.usercode import module_parts

    project(tmp_path, depjobs="import yaml\nimport dephelper\n\ndef mapper(key, value):\n    yield key, value\n",
            dephelper="X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code_digest(["depjobs.mapper"])  # imports it
    import sys

    names = {part.partition(":")[0] for part in module_parts([sys.modules["depjobs"]], "depjobs.mapper")}
    assert names == {"depjobs", "dephelper"}
