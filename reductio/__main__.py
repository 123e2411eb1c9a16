"""``python -m reductio``: the ``reductio`` program, for when the script is not on PATH."""

from reductio.cli import program

program.run()
