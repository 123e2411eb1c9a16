"""A control session: one long-lived worker command per SSH connection, answering control steps.

A one-off command over SSH costs the worker a login shell and a Python:
0.3 s of CPU on the test machine, where root's shell starts pyenv. A job
re-run with every step up to date is nothing but checks, and a step ends
with a publish; a session pays that cost once per connection and answers
each of them in a few milliseconds (its worker end: control.step_session).
It lives as long as its connection and is ended when the code on the
worker changes (setup, distribute), since it has imported the old code.
"""

from __future__ import annotations

import logging
import queue
import threading

from reductio.errors import ReductioError, WorkerSilent, WorkerUnreachable
from reductio.head.transport import Command

log = logging.getLogger("reductio")


class Session:
    """Asks one worker's session command for control steps, one request at a time."""

    def __init__(self, command: Command, name: str) -> None:
        self.command, self.name = command, name
        self._answers: "queue.Queue[dict]" = queue.Queue()
        command.reply.on_answer = self._answers.put
        self._lock = threading.Lock()
        self._asked = 0

    def ask(self, step: str, params: dict) -> dict:
        """The step's result, or its error raised; WorkerUnreachable if the session is gone."""
        with self._lock:
            self._asked += 1
            log.debug("%s: session request %d: %s %s", self.name, self._asked, step, params)
            self.command.tell({"request": {"id": self._asked, "step": step, "params": params}})
            answer = self._wait(self._asked)
        if "error" in answer:
            raise ReductioError.from_dict(answer["error"])
        return answer["result"]

    def is_open(self) -> bool:
        return not self.command.says_no_more()

    def end(self) -> None:
        """Hang up: the worker end sees its stdin close and stops."""
        self.command.kill()

    def _wait(self, number: int) -> dict:
        while True:
            try:
                answer = self._answers.get(timeout=0.05)
            except queue.Empty:
                if self.command.says_no_more() and self._answers.empty():
                    self._gone()
                continue
            if answer.get("id") == number:
                return answer

    def _gone(self) -> None:
        """The session ended: a lost worker's error stands; anything else sends the step to a command of its own."""
        try:
            self.command.finish()
        except WorkerSilent:
            raise
        except ReductioError as err:
            raise WorkerUnreachable(f"its control session ended ({err})") from None
        raise WorkerUnreachable("its control session ended")
