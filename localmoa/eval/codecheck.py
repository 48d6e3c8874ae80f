"""The checker of code tasks: a reply's code, run against its tests in the sandbox.

A code task (kind "code", humaneval.py) is right when its program passes: the reply's
code, the problem's tests and ``check(entry_point)``, run by sandbox.run_program. The
same judge gives the behaviour key that votes over code compare (coderun/examples.py).
``CodeJudge`` exists only when the user asked for code to run (``--execute``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..coderun import examples as codevote
from ..coderun.sandbox import Containment, Limits, Outcome, containment, run_program
from . import humaneval
from .tasks import Task
from .verdict import Verdict


@dataclass
class CodeJudge:
    """Runs code tasks' programs with ``limits`` under ``contained`` (probed when not
    given). ``runs`` counts the programs it started."""

    limits: Limits = field(default_factory=Limits)
    contained: Containment | None = None
    runs: int = 0

    def containment(self) -> Containment:
        if self.contained is None:
            self.contained = containment()
        return self.contained

    def run(self, source: str) -> Outcome:
        self.runs += 1
        return run_program(source, self.limits, self.containment())

    def verdict(self, task: Task, reply: str) -> Verdict:
        """Whether the reply's code passes the task's tests; ``why`` gives the status
        and what happened, ``status`` the sandbox's status."""
        check = task.check or {}
        code = humaneval.extract_code(reply, check["entry_point"])
        if code is None:
            return Verdict(None, False, "no code in the reply", status="error")
        outcome = self.run(humaneval.program(code, check))
        why = "" if outcome.passed else f"{outcome.status}: {outcome.detail}".rstrip(": ")
        return Verdict(code, outcome.passed, why, status=outcome.status)

    def behaviour_key(self, task: Task, reply: str) -> str | None:
        """The reply's vote key: its outputs on the prompt's example calls (the code's
        text when the prompt has none); None when it has no code or cannot run."""
        check = task.check or {}
        code = humaneval.extract_code(reply, check["entry_point"])
        if code is None:
            return None
        calls = codevote.examples(check["prompt"], check["entry_point"])
        if not calls:
            return codevote.text_key(code)
        outcome = self.run(codevote.behaviour_program(humaneval.solution(code, check), calls))
        return codevote.key_of(outcome.result) if outcome.passed else None
