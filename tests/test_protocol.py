"""The head reads a worker's stderr bounded and as it arrives: fake workers (real processes) that misbehave."""

from __future__ import annotations

import os
import shlex
import sys
import threading

import pytest

from reductio.errors import ReductioError
from reductio.head.transport import LocalCommand
from reductio.wire.protocol import MAX_REPLY_LINE, RESULT, Reply, WorkerCommand, params_frame, read_params


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


TOKEN = "feedc0de" * 4


def token_reply(*chunks: bytes) -> Reply:
    reply = Reply(token=TOKEN)
    for chunk in chunks:
        reply.feed(chunk)
    reply.close()
    return reply


def test_with_a_token_only_lines_carrying_it_count_and_the_users_text_before_it_is_kept():
    ours = f"\n{TOKEN} {RESULT}" + '{"files": {"p": 1}}\n'
    reply = token_reply(b"...", ours.encode(), b'reductio-result: {"files": {}}\n', b"\xff\x1b[2J no newline")
    assert reply.outcome(0) == {"files": {"p": 1}}
    assert list(reply.tail) == ["...", 'reductio-result: {"files": {}}', "\ufffd\\x1b[2J no newline"]


def test_with_a_token_a_line_glued_to_the_users_text_still_counts_and_a_fake_never_does():
    glued = f"dots...{TOKEN} {RESULT}" + '{"files": {}}\n'
    reply = token_reply(glued.encode(), f"{RESULT}{{\"files\": {{\"fake\": 1}}}}\n".encode())
    assert reply.outcome(0) == {"files": {}}
    assert reply.tail[0] == "dots..."


def test_with_a_token_an_unknown_prefix_after_it_is_a_malformed_line():
    with pytest.raises(ReductioError, match="malformed reply line"):
        token_reply(f"{TOKEN} reductio-bogus: {{}}\n".encode()).outcome(0)


def test_a_step_held_for_its_verdict_whose_result_cannot_count_is_hung_up_on_not_waited_for():
    """The worker waits on its stdin for the verdict after its result; a result that is malformed must end it."""
    script = (f"import sys, os\nsys.stderr.write('\\n{TOKEN} {RESULT}{{broken\\n'); sys.stderr.flush()\n"
              "while os.read(0, 1 << 16):\n    pass\n")
    command = WorkerCommand(f"exec {sys.executable} -c {shlex.quote(script)}")
    command.token = TOKEN
    ended = threading.Event()
    failure = []

    def wait():
        try:
            LocalCommand(command, "step", beat=0.2).first_result()
        except ReductioError as err:
            failure.append(err)
        ended.set()

    threading.Thread(target=wait, daemon=True).start()
    assert ended.wait(30), "the head still waited for a verdict it will never give"
    assert failure and "malformed reply line" in str(failure[0])


def test_the_parameters_frame_reads_back_exactly_leaving_the_rest_of_the_stream():
    read, write = os.pipe()
    frame = params_frame({"env": {"K": "v" * 100_000}, "token": TOKEN})
    writer = threading.Thread(target=lambda: (os.write(write, frame + b"rest"), os.close(write)))
    writer.start()
    try:
        assert read_params(read) == {"env": {"K": "v" * 100_000}, "token": TOKEN}
        writer.join()
        assert os.read(read, 100) == b"rest"
    finally:
        os.close(read)
