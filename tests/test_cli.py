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
