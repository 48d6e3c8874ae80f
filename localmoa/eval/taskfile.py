"""Users' own tasks: a JSONL file, one task object per line, every line validated.

    {"prompt": "What is 6 x 7?", "answer": 42}
    {"prompt": "Capital of Italy?", "choices": ["Rome", "Oslo", "Lima"], "answer": "A"}
    {"prompt": "Name three colours, no commas.", "check": {"no_commas": true, "words": 3}}

A mistake is one line, ``FILE:LINE: what is wrong; how to fix`` (UsageError, exit 2).
"""

from __future__ import annotations

import json
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

from ..answers import canonical, letters, parse_number
from ..errors import UsageError
from ..fileio import FileRefused, read_prompt_bytes
from . import humaneval
from .checks import check_problem
from .tasks import DEFAULT_SEED, SET_NAMES, Task, choice_prompt, shipped

#: Deepest nesting of lists and objects in a task (checks need 3).
MAX_DEPTH = 16
KEYS = ("id", "prompt", "answer", "choices", "check")
EXAMPLE = '{"prompt": "What is 6 x 7?", "answer": 42}'


def load_tasks(source: str, seed: int = DEFAULT_SEED, limit: int | None = None,
               subset: str | None = None) -> list[Task]:
    """``--tasks``: a shipped set's name, HumanEval (all 164 unless ``limit``, in the
    ``subset`` order), or a JSONL file of tasks (all of them unless ``limit``)."""
    if limit is not None and limit < 1:
        raise UsageError(f"--limit {limit}: give at least 1 task")
    if subset is not None and source != humaneval.NAME:
        raise UsageError(f"--subset {subset}: only --tasks {humaneval.NAME} takes a subset; "
                         "the generated sets are chosen by --seed")
    if source == humaneval.NAME:
        return humaneval.load(limit, humaneval.parse_order(subset))
    if source in SET_NAMES:
        return shipped(source, seed, limit)
    path = Path(source).expanduser()
    if not path.exists():
        raise UsageError(f"--tasks {source}: no task set of that name and no such file; give "
                         f"one of {', '.join(SET_NAMES)}, {humaneval.NAME}, or a JSONL file "
                         "of tasks")
    tasks = read_task_file(path)
    return tasks[:limit] if limit is not None else tasks


def read_task_file(path: Path) -> list[Task]:
    """Every task of a JSONL file, or UsageError naming the first bad line."""
    try:
        lines = read_prompt_bytes(path).decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise UsageError(f"--tasks {path}: not UTF-8 text; save the file as UTF-8") from None
    except FileRefused as exc:
        raise UsageError(f"--tasks {path}: {exc.reason}") from None
    except OSError as exc:
        raise UsageError(f"--tasks {path}: {exc.strerror}") from None
    tasks: list[Task] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            task = parse_task(line, f"line-{number}")
        except ValueError as exc:
            raise UsageError(f"{path}:{number}: {exc}") from None
        if task.id in seen:
            raise UsageError(f'{path}:{number}: the id "{task.id}" is also on line '
                             f"{seen[task.id]}; give each task its own id")
        seen[task.id] = number
        tasks.append(task)
    if not tasks:
        raise UsageError(f"--tasks {path}: no tasks in the file; write one per line, "
                         f"e.g. {EXAMPLE}")
    return tasks


def parse_task(line: str, default_id: str) -> Task:
    """One line of a task file as a Task; ValueError says what is wrong and how to fix it."""
    try:
        item = json.loads(line, parse_float=Decimal)  # 0.1 stays exactly 0.1
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno}); write one task "
                         f"object per line, e.g. {EXAMPLE}") from None
    except RecursionError:  # the JSON decoder's own bound, far deeper than MAX_DEPTH
        raise _too_deep_error() from None
    if too_deep(item, MAX_DEPTH):
        raise _too_deep_error()
    if not isinstance(item, dict):
        raise ValueError(f"a task is a JSON object, e.g. {EXAMPLE}")
    unknown = [k for k in item if k not in KEYS]
    if unknown:
        raise ValueError(f'unknown key "{unknown[0]}"; a task has {", ".join(KEYS)}')
    prompt = item.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f'needs a non-empty "prompt" string, e.g. {EXAMPLE}')
    task_id = item.get("id", default_id)
    if not isinstance(task_id, str) or not task_id.strip():
        raise ValueError('"id" must be a non-empty string, e.g. "id": "sum-1"')
    has_answer, has_check = "answer" in item, "check" in item
    if has_answer == has_check:
        raise ValueError(('give "answer" or "check", not both' if has_answer else
                          'needs "answer" (a number), "choices" with "answer" (a letter), or '
                          'a "check" of rules') + f"; e.g. {EXAMPLE}")
    if has_check:
        if "choices" in item:
            raise ValueError('"choices" go with "answer", not with "check"; drop one of them')
        problem = check_problem(item["check"])
        if problem:
            raise ValueError(problem)
        return Task(id=task_id, set="file", prompt=prompt, kind="check", check=item["check"])
    if "choices" in item:
        choices = _choices(item["choices"])
        return Task(id=task_id, set="file", prompt=choice_prompt(prompt, choices),
                    kind="choice", answer=_letter(item["answer"], choices), choices=choices)
    return Task(id=task_id, set="file", prompt=prompt, kind="number",
                answer=canonical(_number(item["answer"])))


def _too_deep_error() -> ValueError:
    return ValueError(f"JSON nested more than {MAX_DEPTH} levels deep; a task is a flat "
                      f"object, e.g. {EXAMPLE}")


def too_deep(value: Any, limit: int) -> bool:
    """Whether lists and dicts nest deeper than ``limit`` in ``value`` (no recursion)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            if depth >= limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def _number(value: Any) -> Fraction:
    found: Fraction | None = None
    if isinstance(value, (int, Decimal)) and not isinstance(value, bool):
        found = Fraction(value)
    elif isinstance(value, str):
        found = parse_number(value)
    if found is None:
        raise ValueError(f'"answer" must be a number, e.g. 42, -3.5 or "3/4" (got '
                         f'{json.dumps(value, default=str)}); for a multiple-choice task add '
                         '"choices"')
    return found


def _choices(value: Any) -> tuple[str, ...]:
    ok = (isinstance(value, list) and 2 <= len(value) <= 26
          and all(isinstance(v, str) and v.strip() for v in value))
    if not ok:
        raise ValueError('"choices" must be a list of 2 to 26 non-empty strings, e.g. '
                         '["Rome", "Oslo", "Lima"]')
    if len({v.strip().lower() for v in value}) != len(value):
        raise ValueError('"choices" has the same choice twice; make each one different')
    return tuple(v.strip() for v in value)


def _letter(value: Any, choices: tuple[str, ...]) -> str:
    valid = letters(len(choices))
    if isinstance(value, str):
        if value.strip().upper() in valid and len(value.strip()) == 1:
            return value.strip().upper()
        for letter, text in zip(valid, choices, strict=True):
            if value.strip().lower() == text.lower():
                return letter
    raise ValueError(f'"answer" must be the letter of a choice ({valid[0]} to {valid[-1]}) '
                     "or the text of one of the choices")
