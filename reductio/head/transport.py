"""Commands running on a worker as the head holds them: stdin, stdout and stderr as byte streams.

A local worker's command is a child process with pipes; an SSH worker's is
an exec channel on the worker's one connection. Data never passes through
invoke's ``run``: it reads stdin a byte at a time and keeps all output in
memory. Whatever the caller does not read -- stderr always, stdout unless
it is the data -- is drained by a thread as it arrives and kept bounded, so
a chatty command never blocks on a full pipe or window, and every byte heard
is a sign of life for the watchdog (liveness.py).

Modes: ``step`` (a reductio.worker control step), ``r`` (stdout is data):
the head beats on their stdin; ``w`` (stdin is data); ``shell`` (a plain
command: stdin closed, the end of stdout kept).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Optional

from paramiko.common import MSG_CHANNEL_REQUEST

from reductio.errors import ReductioError, StreamBroken, WorkerSilent, WorkerUnreachable, printable
from reductio.wire.protocol import Reply

_CHUNK = 1 << 16
_STDOUT_KEPT = 1 << 16  # bytes of a shell command's or control step's stdout kept (the rest is dropped)


@dataclass(frozen=True)
class Finished:
    """A plain command's outcome: exit code, the end of its stdout and stderr."""

    exited: int
    stdout: str
    stderr: str


class Command:
    """One command on a worker, started by a subclass; ``heard`` is when it last said anything."""

    def __init__(self, mode: str, beat: float, on_progress=None, command: str = "") -> None:
        self.mode, self.beat = mode, beat
        self._answered = threading.Event()  # a first result came, or stderr ended
        self._stderr_over = threading.Event()
        self._results = threading.Condition()  # each later result of a step held open (``tell``, ``answer``)
        self._asked = 0  # results that came before the last message told
        # A reductio.worker command (protocol.WorkerCommand) gets its parameters first on its stdin, and marks
        # its protocol lines with its token; a plain command has neither.
        self._first_in: bytes = getattr(command, "stdin", b"")
        self.reply = Reply(on_progress, self._heard_result, getattr(command, "token", None))
        self.heard = time.monotonic()
        self.ended: Optional[ReductioError] = None  # why it was stopped from outside: lost, aborted
        self._stdout = bytearray()
        self._done = threading.Event()
        self._readers = []
        self._stdin_lock = threading.RLock()  # beats and messages never interleave
        self._code: Optional[int] = None

    def _start_threads(self) -> None:
        self._readers.append(_daemon(self._drain_stderr))
        if self.mode != "r":
            self._readers.append(_daemon(self._drain, self._read_stdout, self._kept_stdout))
        if self._first_in:  # before any beat or data; a command that is gone already says why on stderr
            try:
                with self._stdin_lock:
                    self._write(self._first_in)
            except (OSError, EOFError):
                pass
        if self.mode in ("step", "r"):  # the worker does not read this stdin: beat on it
            _daemon(self._pace)
        elif self.mode == "shell":
            self._close_stdin()

    def is_over(self) -> bool:
        return self._code is not None or self.ended is not None

    def says_no_more(self) -> bool:
        """True once the command can report nothing more: its stderr ended, or it was stopped."""
        return self._stderr_over.is_set() or self.is_over()

    def write(self, data: bytes) -> None:
        """Send data to the command's stdin (mode ``w``)."""
        try:
            self._write(data)
        except (OSError, EOFError) as err:
            raise StreamBroken(f"the command stopped reading its input ({err or type(err).__name__})") from None

    def read(self, size: int) -> bytes:
        """Read data from the command's stdout (mode ``r``); b"" at its end."""
        try:
            data = self._read_stdout(size)
        except (OSError, EOFError):
            data = b""
        self.heard = time.monotonic()
        return data

    def close(self) -> int:
        """Close our end, wait for the command and its output; its exit code (once; later calls repeat it)."""
        if self._code is None:
            if self.mode == "w":
                self._close_stdin()
            elif self.mode == "r":
                while self.read(_CHUNK):
                    pass
            code = self._wait()
            for reader in self._readers:
                reader.join()
            self.reply.close()
            self._done.set()
            self._close_stdin()
            self._release()
            self._code = code
        return self._code

    def first_result(self) -> dict:
        """The step's result, leaving the command running for its verdict (``tell``); else finish's error."""
        self._answered.wait()
        if self.reply.first is not None and self.reply.error is None and self.ended is None:
            return self.reply.first
        self._close_stdin()  # no verdict is coming: a worker waiting for one stops (heartbeat.py)
        return self.finish()

    def answer(self) -> dict:
        """The result a step held open gave after the last message told; else finish's error."""
        with self._results:
            self._results.wait_for(lambda: self.reply.results > self._asked or self.says_no_more())
        if self.reply.results > self._asked and self.reply.error is None and self.ended is None:
            return self.reply.result
        return self.finish()

    def _heard_result(self) -> None:
        self._answered.set()
        with self._results:
            self._results.notify_all()

    def tell(self, message: dict) -> None:
        """Send a step held open after its result one message (a JSON line on its stdin)."""
        line = json.dumps(message, sort_keys=True).encode("utf-8") + b"\n"
        self._asked = self.reply.results
        try:
            with self._stdin_lock:
                self._write(line)
        except (OSError, EOFError):
            pass  # finish() says what became of the command

    def finish(self) -> dict:
        """Close, and return the reply of a reductio.worker command, or raise its error."""
        code = self._ended_code()
        return self.reply.outcome(code, self._how_ended())

    def finished(self) -> Finished:
        """Close, and return a plain command's outcome."""
        code = self._ended_code()
        return Finished(code, self._stdout.decode("utf-8", "replace"), "\n".join(self.reply.tail))

    def _ended_code(self) -> int:
        """Close; the exit code, unless the command was stopped from outside or its connection went."""
        code = self.close()
        if self.ended is not None:
            raise self.ended
        self._check_exit(code)
        return code

    def end(self, why: ReductioError, kill: bool = True) -> None:
        """Stop the command from outside (the worker is lost, or the step abandoned); ``why`` is its error.

        ``kill=False`` only records why, for a caller about to cut the connection under it.
        """
        if self._code is None:
            self.ended = self.ended or why
            self._heard_result()  # whoever waits for an answer hears there is none
            if kill:
                self._kill()

    def kill(self) -> None:
        """Abandon the command: the transfer is being given up."""
        self.end(ReductioError("abandoned"))
        self.close()

    def _drain(self, read, handle) -> None:
        while True:
            try:
                data = read(_CHUNK)
            except (OSError, EOFError):
                data = b""
            if not data:
                return
            self.heard = time.monotonic()
            handle(data)

    def _drain_stderr(self) -> None:
        try:
            self._drain(self._read_stderr, self._heard_stderr)
        finally:
            self._stderr_over.set()
            self._heard_result()  # no result is coming any more: first_result() and answer() then finish

    def _heard_stderr(self, data: bytes) -> None:
        self.reply.feed(data)

    def _kept_stdout(self, data: bytes) -> None:
        self._stdout += data
        if len(self._stdout) > _STDOUT_KEPT:
            del self._stdout[:-_STDOUT_KEPT]

    def _pace(self) -> None:
        """Beat on a control step's stdin, so the worker knows we are here."""
        while not self._done.wait(self.beat):
            try:
                with self._stdin_lock:
                    self._write(b"\n")
            except (OSError, EOFError):
                return

    def _check_exit(self, code: int) -> None:
        """Raise if the command ended without an exit status because its connection went."""

    def _how_ended(self) -> Optional[str]:
        """How the command ended, when its exit code cannot say."""
        return None

    # What each kind of worker provides.
    def _write(self, data: bytes) -> None:
        raise NotImplementedError

    def _read_stdout(self, size: int) -> bytes:
        raise NotImplementedError

    def _read_stderr(self, size: int) -> bytes:
        raise NotImplementedError

    def _close_stdin(self) -> None:
        raise NotImplementedError

    def _wait(self) -> int:
        raise NotImplementedError

    def _kill(self) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        pass


def _daemon(target, *args) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


class LocalCommand(Command):
    """A local worker's command: a child process with three pipes."""

    def __init__(self, command: str, mode: str, beat: float, on_progress=None) -> None:
        super().__init__(mode, beat, on_progress, command)
        self._process = subprocess.Popen(command, shell=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, bufsize=0)
        self._start_threads()

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        with self._stdin_lock:
            if self._process.stdin.closed:  # we closed it: the command is over, or being stopped
                raise BrokenPipeError("stdin closed")
            while view:
                view = view[self._process.stdin.write(view):]

    def _read_stdout(self, size: int) -> bytes:
        return self._process.stdout.read(size)

    def _read_stderr(self, size: int) -> bytes:
        return self._process.stderr.read(size)

    def _close_stdin(self) -> None:
        with self._stdin_lock:
            try:
                self._process.stdin.close()
            except OSError:  # the command stopped reading: its stderr says why
                pass

    def _wait(self) -> int:
        return self._process.wait()

    def _kill(self) -> None:
        try:  # a reductio command leads its own process group (heartbeat.py): its sort, ssh, shares go too
            os.killpg(self._process.pid, signal.SIGKILL)
        except OSError:
            try:
                self._process.kill()
            except OSError:
                pass
        self._close_stdin()

    def _release(self) -> None:
        self._process.stdout.close()
        self._process.stderr.close()


class SshCommand(Command):
    """An SSH worker's command: an exec channel on the worker's connection."""

    def __init__(self, transport, command: str, mode: str, beat: float, timeout: float, on_progress=None) -> None:
        super().__init__(mode, beat, on_progress, command)
        self._transport, self._timeout = transport, timeout
        _hear_exit_signals(transport)
        self._channel = transport.open_session(timeout=timeout)
        self._signal: Optional[str] = None  # the name sshd gave the signal that killed the command, if one did
        self._channel.exec_command(command)
        self._start_threads()

    def _write(self, data: bytes) -> None:
        self._channel.sendall(data)

    def _read_stdout(self, size: int) -> bytes:
        return self._channel.recv(size)

    def _read_stderr(self, size: int) -> bytes:
        return self._channel.recv_stderr(size)

    def _close_stdin(self) -> None:
        try:
            self._channel.shutdown_write()
        except (OSError, EOFError):
            pass

    def _wait(self) -> int:
        """The exit status; for a command killed by a signal, minus its number, as subprocess says it."""
        code = self._channel.recv_exit_status()
        self._signal = _EXIT_SIGNALS.pop(self._channel, None)
        number = getattr(signal.Signals, f"SIG{self._signal}", None) if self._signal else None
        return -number if code == -1 and number is not None else code

    def _how_ended(self) -> Optional[str]:
        if self._code != -1 or not self._transport.is_active():
            return None
        if self._signal:  # not a name this machine knows: OpenSSH says SIG@openssh.com for one it cannot name
            return f"was killed by a signal its sshd calls {printable(self._signal[:40])}"
        return "ended with no exit status (its sshd sent none)"

    def _kill(self) -> None:
        _close(self._channel)

    def _release(self) -> None:
        _close(self._channel)

    def _check_exit(self, code: int) -> None:
        if code == -1 and not self._transport.is_active():
            # TCP_USER_TIMEOUT (the error goes to whichever thread meets it first), or a connection that ended
            # after a silence: a host that went silent, not to be retried (it already had dead_after)
            quiet = time.monotonic() - self.heard
            timed_out = getattr(getattr(self._transport, "saved_exception", None), "errno", None) == errno.ETIMEDOUT
            if timed_out or quiet >= self._timeout / 2:
                raise WorkerSilent(f"its connection dropped after {quiet:.0f} s without a word"
                                   f" (dead_after {self._timeout:g} s); it is lost")
            raise WorkerUnreachable("lost the connection during a command")


# Per channel, the signal its command was killed by (RFC 4254 6.10 "exit-signal": the name without SIG).
_EXIT_SIGNALS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _hear_exit_signals(transport) -> None:
    """Have ``transport`` keep each channel's exit-signal: paramiko drops it and leaves the exit status -1, which
    read as minus a signal number was SIGHUP whatever the signal."""
    if "_channel_handler_table" in vars(transport):
        return
    table = type(transport)._channel_handler_table
    handle = table[MSG_CHANNEL_REQUEST]

    def handle_request(channel, message) -> None:
        start = message.packet.tell()
        if message.get_text() == "exit-signal":
            message.get_boolean()  # want_reply: always false for exit-signal
            _EXIT_SIGNALS[channel] = message.get_text()
            return
        message.packet.seek(start)
        handle(channel, message)

    transport._channel_handler_table = {**table, MSG_CHANNEL_REQUEST: handle_request}


def _close(channel) -> None:
    """Close a channel; on a connection that already died, paramiko raises EOFError or SSHException."""
    try:
        channel.close()
    except Exception:  # noqa: BLE001 - the channel is gone either way
        pass


def shut(sock) -> None:
    """Wake every thread blocked on a socket, then close it (close alone wakes none)."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass

