"""A user's own check command, run on one candidate answer (the ``verify`` selector's
``check:``).

The candidate goes into an empty temporary folder as ``answer.txt`` (the whole reply)
and ``candidate.py`` (its code: the fenced block, else the reply). The command runs
there, split like a shell would (no shell), with a clean environment (PATH, LANG,
HOME and TMPDIR set to the folder), stdin closed, a wall-clock limit, in a new network
namespace where ``unshare -rn`` works. Exit status 0 passes. The command is the user's
and is trusted; what it runs of the candidate is the user's choice.
"""

from __future__ import annotations

import shlex
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .sandbox import CHILD_ENV, SYSTEM_PATH, Containment, kill_group


@dataclass(frozen=True)
class CommandOutcome:
    passed: bool
    detail: str


def run_check(command: str, answer: str, code: str | None, timeout_s: float,
              contained: Containment) -> CommandOutcome:
    """Run ``command`` on one candidate (see the module)."""
    argv = shlex.split(command)
    with tempfile.TemporaryDirectory(prefix="localmoa-check-") as top:
        work = Path(top)
        (work / "answer.txt").write_text(answer, encoding="utf-8")
        (work / "candidate.py").write_text(code if code is not None else answer,
                                           encoding="utf-8")
        prefix = [contained.unshare, "-rn", "--"] if contained.unshare else []
        env = {**CHILD_ENV, "PATH": SYSTEM_PATH, "HOME": top, "TMPDIR": top}
        try:
            proc = subprocess.Popen([*prefix, *argv], cwd=work, env=env,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            return CommandOutcome(False, f"could not start {argv[0]!r}: {exc.strerror}")
        try:
            stdout, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return CommandOutcome(False, f"no end within {timeout_s:g} s")
        finally:
            kill_group(proc)  # what it left running goes too
    if proc.returncode == 0:
        return CommandOutcome(True, "exit 0")
    tail = (stderr or stdout).decode("utf-8", "replace").strip().splitlines()
    return CommandOutcome(False, f"exit {proc.returncode}"
                          + (f": {tail[-1][:200]}" if tail else ""))
