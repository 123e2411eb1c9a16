"""The reductio program: -f as a module or a path, task names with underscores, --force."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from conftest import write_lines

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.rst").read_text(encoding="utf-8")


def _readme_fabfile(folder: Path) -> Path:
    """README's "Writing a job" fabfile, exactly as printed there."""
    block = README.split("imports the tasks and adds its own::\n\n")[1].split("\n\nRun it with")[0]
    path = folder / "mymodule.py"
    path.write_text("\n".join(line[4:] for line in block.splitlines()) + "\n", encoding="utf-8")
    return path


def test_the_readme_job_runs_as_written_with_reductio_and_fab(tmp_path, isolated_home):
    folder = tmp_path / "project"
    folder.mkdir()
    text = _readme_fabfile(folder).read_text()
    words = write_lines(tmp_path / "words", ["Abba", "cab", "éclair"])
    (folder / "mymodule.py").write_text(text.replace("/usr/share/dict/words", str(words)))
    env = dict(os.environ, HOME=str(isolated_home))
    first = subprocess.run(["reductio", "-f", "mymodule", "setup", "do_stuff"], cwd=folder, env=env,
                           capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    table = dict(line.split("\t") for line in (folder / "bigrams.tsv").read_text().splitlines())
    assert table == {"ab": "2", "bb": "1", "ba": "1", "ca": "1", "éc": "1", "cl": "1", "la": "1", "ai": "1",
                     "ir": "1"}
    again = subprocess.run(["fab", "-c", "mymodule", "do-stuff"], cwd=folder, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "map: pairs is up to date from words; skipped" in again.stdout
    forced = subprocess.run(["reductio", "-f", str(folder / "mymodule.py"), "--force", "do-stuff"], cwd=tmp_path,
                            env=env, capture_output=True, text=True)
    assert forced.returncode == 0, forced.stderr
    assert "skipped" not in forced.stdout


def test_list_shows_every_task_with_a_line_of_help_and_help_shows_a_tasks_arguments():
    listing = subprocess.run(["reductio", "-f", str(REPO / "fabfile.py"), "--list"], capture_output=True, text=True)
    assert listing.returncode == 0
    for name in ("setup", "distribute", "load", "initialize", "map", "transform", "scatter", "sort",
                 "sort-unique", "reduce", "merge", "delete", "status", "report", "bigrams"):
        line = [row for row in listing.stdout.splitlines() if row.strip().startswith(name + " ")]
        assert line and len(line[0].split()) > 1, name
    help_map = subprocess.run(["reductio", "-f", str(REPO / "fabfile.py"), "--help", "map"],
                              capture_output=True, text=True)
    assert help_map.returncode == 0
    for flag, words in (("--function", "dotted path"), ("--source", "dataset to read"),
                        ("--target", "dataset to write"), ("--combine", "combiner"), ("--force", "up to date")):
        assert flag in help_map.stdout and words in help_map.stdout, flag


def test_an_option_value_of_the_wrong_kind_is_a_usage_error_not_a_traceback(isolated_home):
    for value, message in (("abc", "a task option's value is of the wrong kind (invalid literal for int()"),
                           ("-5", "bigrams: --top is how many bigrams to print, 0 or more, not -5")):
        done = subprocess.run(["reductio", "-f", str(REPO / "fabfile.py"), "bigrams", "--top", value],
                              capture_output=True, text=True, env=dict(os.environ, HOME=str(isolated_home)))
        assert done.returncode == 1
        assert message in done.stderr
        assert "Traceback" not in done.stderr
        assert not (isolated_home / ".reductio").exists()  # refused before any step ran
