"""The worker side: ``python -m reductio.worker STEP CODE``, its parameters first on its stdin.

The head runs one such command per worker and step, locally or over SSH.
The parameters come on stdin (protocol.py), never on the command line,
which every local user may read. Its result or error goes to stderr as
protocol lines marked with the parameters' token (protocol.py), so stdout
stays free for data (``cat``), stdin after the parameters for data
(``receive``), and nothing the user's code writes passes for them.
Any exception that is not a ReductioError is a bug in reductio and keeps
its traceback. The steps live in datasteps.py (reading and writing a
dataset's lines), control.py (markers and folders), receiving.py and
delivery.py (files between workers); a command imports only its step's module, since every
scatter connection starts one and Python's imports are most of its cost.
This module and the ones it imports use only the standard library.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import time

from reductio.errors import ReductioError, environment_error
from reductio.wire import own_code
from reductio.wire.protocol import ERROR, RESULT, emit, read_params, use_token
from reductio.worker import heartbeat, steplog
from reductio.worker.buffering import buffered_stdout
from reductio.worker.control import answer
from reductio.worker.store import Home

# Each step's module: the step itself is its function step_NAME.
STEPS = {
    "map": "datasteps", "transform": "datasteps", "reduce": "datasteps", "sort": "datasteps",
    "cat": "sending", "read": "sending",
    "receive": "receiving", "send": "delivery",
    "check": "control", "publish": "control", "discard": "control", "prepare": "control",
    "delete": "control", "status": "control", "session": "control",
    "authorize": "authorized_keys",
}

_WRITING = ("map", "transform", "reduce", "sort", "receive", "send")
_USER_CODE = ("map", "transform", "reduce")  # their stdout is only what the user's code prints


def step_function(step: str):
    # its package, not a spelt "reductio": the step modules sit beside this one wherever the package puts it
    return getattr(importlib.import_module(f"{__package__}.{STEPS[step]}"), f"step_{step}")


def main(argv: list = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    code = argv[1] if len(argv) == 2 else None  # the head's own_code digest (below)
    if len(argv) not in (1, 2) or argv[0] not in STEPS or (code is not None and not own_code.is_digest(code)):
        print(f"usage: python -m reductio.worker {{{','.join(STEPS)}}} [CODE] (its parameters first on stdin)",
              file=sys.stderr)
        return 2
    os.umask(0o077)  # everything in a reductio home is its owner's alone
    step = argv[0]
    try:
        params = read_params(0)
    except ValueError as err:
        print(f"reductio worker: {err}", file=sys.stderr)
        return 2
    use_token(params.pop("token", None))
    # CODE: the head's own_code digest, in argv, where a worker from before this check refuses it (usage, exit 2)
    # rather than run its own code; absent when a share or a test runs a step by hand
    if code is not None and code != own_code.digest():
        emit(ERROR, ReductioError(own_code.MISMATCH).to_dict())
        return 1
    then = params.pop("then", None)  # "publish": wait for the head's verdict after the result (job.py)
    if params.get("head"):
        heartbeat.start(params["head"])
    started = time.time()
    try:
        try:
            with buffered_stdout() if step in _USER_CODE else contextlib.nullcontext():  # a stray print per record
                result = step_function(step)(params)
        except OSError as err:
            raise environment_error(err, home=params.get("home")) from err
    except ReductioError as err:
        emit(ERROR, err.to_dict())
        if "share" not in params:  # the worker that started the share logs its failure
            steplog.log(params, f"{step} failed after {time.time() - started:.1f} s: {err}\n{err.details}".rstrip())
        return 1
    except BaseException:
        import traceback  # only a crash needs it

        steplog.log(params, f"{step} crashed after {time.time() - started:.1f} s:\n{traceback.format_exc()}")
        raise
    if step in _WRITING and (Home(params["home"]).tmp / params["attempt"]).is_dir():
        Home(params["home"]).finished(params["attempt"])
    emit(RESULT, result)
    if step not in ("check", "status", "session") and "share" not in params:  # a share's worker logs the step
        steplog.log(params, f"{step} done in {time.time() - started:.1f} s")
    return _verdict(params) if then == "publish" else 0


def _verdict(params: dict) -> int:
    """After a step's result, publish its attempt as the head says, without a new session.

    The head's messages are the moves of job.publish, each answered with a
    result: ``publish`` (a verdict: publish, or with ``phase: prepare`` only
    prepare), then ``switch`` and ``drop``. Its only other answer is to hang up
    (then it discards the attempt itself).
    """
    message = heartbeat.message()
    while True:
        if "publish" in message:
            request = dict(message["publish"], attempt=params["attempt"])
        else:
            move = next(iter(message))
            request = {"phase": move, "target": message[move], "attempt": params["attempt"]}
        published = answer({"step": "publish", "params": request}, params["home"])
        if "error" in published:
            emit(ERROR, published["error"])
            return 1
        emit(RESULT, published["result"])
        if request.get("phase") not in ("prepare", "switch"):
            return 0
        message = heartbeat.message()


def _utf8_file_names() -> None:
    """Run again in the C.UTF-8 locale when this Python would name files in ASCII, as CPython never does.

    PyPy 3.9 in the C locale (an SSH session without LANG, a bare container) encodes file names, arguments
    and the environment in ASCII, where CPython switches that locale to UTF-8 (PEP 538, and LC_CTYPE for
    its children): a step over an input file or home whose name is not ASCII stopped with a
    UnicodeEncodeError. A locale set on purpose (LC_ALL) is left as it is.
    """
    if sys.getfilesystemencoding() == "ascii" and not os.environ.get("LC_ALL") \
            and os.environ.get("LC_CTYPE") != "C.UTF-8":  # once: a system without C.UTF-8 stays as it was
        os.environ["LC_CTYPE"] = "C.UTF-8"
        os.execv(sys.executable, [sys.executable, "-m", "reductio.worker", *sys.argv[1:]])


if __name__ == "__main__":
    _utf8_file_names()
    sys.exit(main())
