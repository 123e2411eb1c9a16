"""The head reads a worker's stderr bounded and as it arrives: fake workers (real processes) that misbehave."""

from __future__ import annotations

import shlex
import sys

import pytest

from reductio.errors import ReductioError
from reductio.protocol import MAX_REPLY_LINE, RESULT
from reductio.transport import LocalCommand


def fake_worker(program: str) -> LocalCommand:
    """A child process standing in for a worker command: ``program`` is Python writing to stderr."""
    script = "import sys\nerr = sys.stderr.buffer\n" + program
    return LocalCommand(f"exec {sys.executable} -c {shlex.quote(script)}", "step", beat=0.5)


def test_forty_megabytes_of_stderr_without_a_newline_keep_a_short_tail_and_the_result_still_counts():
    command = fake_worker(
        "block = b'x' * (1 << 20)\n"
        "for _ in range(40):\n    err.write(block)\n"
        f"err.write(b'\\n{RESULT}' + b'{{\"files\": {{}}}}\\n')\n")
    assert command.finish() == {"files": {}}
    tail = list(command.reply.tail)
    assert len(tail) == 1 and tail[0].endswith(" [cut]") and len(tail[0]) < 2100


def test_a_malformed_reply_line_is_a_clear_error_not_a_traceback():
    command = fake_worker(f"err.write(b'{RESULT}' + b'{{not json\\n')\n")
    with pytest.raises(ReductioError, match="the worker sent a malformed reply line"):
        command.finish()


def test_a_deeply_nested_reply_is_refused_as_nested_too_deeply():
    command = fake_worker(f"err.write(b'{RESULT}' + b'{{\"a\": ' + b'[' * 100000 + b']' * 100000 + b'}}\\n')\n")
    with pytest.raises(ReductioError, match="nested too deeply"):
        command.finish()


def test_a_reply_line_longer_than_the_cap_is_refused_without_keeping_it():
    size = MAX_REPLY_LINE + (1 << 20)
    command = fake_worker(f"err.write(b'{RESULT}' + b'{{\"x\": \"' + b'y' * {size} + b'\"}}\\n')\n")
    with pytest.raises(ReductioError, match="longer than"):
        command.finish()
    assert len(command.reply._pending) == 0


@pytest.mark.parametrize("program, said", [
    ("err.write(b'gone\\n'); err.flush(); import sys; sys.exit(255)", "worker command failed (exit 255): gone"),
    ("import os, signal; os.kill(os.getpid(), signal.SIGTERM)", "killed by SIGTERM"),
])
def test_an_exit_code_is_a_signal_only_where_a_shell_would_say_one(program, said):
    with pytest.raises(ReductioError, match=said.replace("(", r"\(").replace(")", r"\)")):
        fake_worker(program).finish()
