"""The shipped task sets (deterministic from a seed, answers right by construction) and
users' JSONL task files. Pure: no model."""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

import pytest

from localmoa.answers import parse_number
from localmoa.errors import UsageError
from localmoa.eval.checks import check_problem, score
from localmoa.eval.facts import FACTS
from localmoa.eval.taskfile import load_tasks, parse_task, read_task_file
from localmoa.eval.tasks import DEFAULT_LIMIT, GENERATORS, SET_NAMES, shipped


@pytest.mark.parametrize("name", SET_NAMES)
def test_the_same_seed_gives_the_same_tasks(name: str) -> None:
    assert shipped(name, seed=7, limit=20) == shipped(name, seed=7, limit=20)
    assert shipped(name, seed=7, limit=20) != shipped(name, seed=8, limit=20)


@pytest.mark.parametrize("name", SET_NAMES)
def test_tasks_are_well_formed(name: str) -> None:
    tasks = shipped(name, seed=3, limit=30)
    assert len(tasks) == 30
    assert len({t.id for t in tasks}) == 30
    assert len({t.prompt for t in tasks}) >= 25  # generated, so hardly ever repeated
    for t in tasks:
        if t.kind == "number":
            assert parse_number(t.answer or "") is not None and "Answer: <number>" in t.prompt
        elif t.kind == "choice":
            assert t.answer in "ABCD" and len(t.choices) == 4
        else:
            assert t.kind == "check" and check_problem(t.check) is None


def test_default_limit_and_a_longer_prefix() -> None:
    assert len(shipped("arith")) == DEFAULT_LIMIT
    assert shipped("arith", limit=200)[:10] == shipped("arith", limit=10)


def _evaluate(expression: str) -> Fraction:
    tokens = expression.replace("×", "*").split()
    value = Fraction(tokens[0])
    for op, operand in zip(tokens[1::2], tokens[2::2], strict=True):
        n = Fraction(operand)
        value = value + n if op == "+" else value - n if op == "-" else value * n
    return value


def test_arith_answers_are_right() -> None:
    for t in shipped("arith", seed=11, limit=200):
        expression = re.fullmatch(r"What is (.+)\? Give .*", t.prompt)
        assert expression, t.prompt
        assert parse_number(t.answer or "") == _evaluate(expression[1]), t


def test_compare_answers_are_right_and_set_the_trap() -> None:
    for t in shipped("compare", seed=11, limit=200):
        found = re.fullmatch(r"Which is (larger|smaller), ([\d.]+) or ([\d.]+)\? .*", t.prompt)
        assert found, t.prompt
        one, two = Fraction(found[2]), Fraction(found[3])
        assert one != two
        assert parse_number(t.answer or "") == (max if found[1] == "larger" else min)(one, two)
        # the same whole part, one decimal digit against two: 9.11 against 9.9
        assert found[2].split(".")[0] == found[3].split(".")[0]
        assert sorted(len(x.split(".")[1]) for x in (found[2], found[3])) == [1, 2]


def _solve_word_problem(question: str) -> int:
    """An independent reading of each word-problem template."""
    a, b, *rest = (int(n) for n in re.findall(r"\d+", question))
    if "buys" in question:
        return a + b
    if "gave" in question:
        return a - b
    if "equally" in question:
        return a // b
    if "get off" in question:
        return a - b + rest[0]
    assert any(w in question for w in ("box holds", "costs", "travels", "reads")), question
    return a * b


def test_word_problem_answers_are_right() -> None:
    tasks = shipped("word", seed=5, limit=300)
    for t in tasks:
        question = t.prompt.split(" Give the final answer")[0]
        assert parse_number(t.answer or "") == _solve_word_problem(question), t.prompt
        assert (parse_number(t.answer or "") or 0) > 0
    assert len({t.prompt.split()[1:3][0] for t in tasks}) > 3  # the templates vary


def test_mcq_answers_point_at_the_right_fact() -> None:
    tasks = shipped("mcq", seed=2, limit=1000)
    assert len(tasks) == len(FACTS) >= 30  # a finite set: every fact once
    rights = {q: right for q, right, _ in FACTS}
    for t in tasks:
        question = t.prompt.splitlines()[0]
        assert t.choices[" ABCD".index(t.answer or " ") - 1] == rights[question]
        listed = t.prompt.splitlines()[1:5]
        assert listed == [f"{letter}. {c}" for letter, c in zip("ABCD", t.choices, strict=True)]
        assert score(t, t.answer or "").correct and score(t, rights[question]).correct
    assert len({t.answer for t in tasks}) == 4  # the right answer is not always A


def test_facts_are_unambiguous() -> None:
    assert len({q for q, _, _ in FACTS}) == len(FACTS)
    for question, right, wrong in FACTS:
        choices = [right, *wrong]
        assert len({c.lower() for c in choices}) == 4, question


def test_format_tasks_state_their_rule() -> None:
    for t in shipped("format", seed=4, limit=100):
        rule, value = next(iter((t.check or {}).items()))
        if rule in ("words", "max_words"):
            assert f" {value} words" in t.prompt
        elif rule == "json_keys":
            assert all(f'"{k}"' in t.prompt for k in value)
        elif rule in ("contains", "starts_with"):
            assert f'"{value}"' in t.prompt
        else:
            assert rule == "no_commas" and "commas" in t.prompt
    assert {next(iter(t.check or {})) for t in shipped("format", limit=100)} == {
        "words", "json_keys", "contains", "no_commas", "starts_with", "max_words"}


def test_mixed_takes_each_set_in_turn() -> None:
    mixed = shipped("mixed", seed=9, limit=12)
    assert [t.set for t in mixed[:5]] == list(GENERATORS)
    assert mixed[0] == shipped("arith", seed=9, limit=1)[0]
    assert mixed[5] == shipped("arith", seed=9, limit=2)[1]
    many = shipped("mixed", seed=9, limit=300)  # past the end of mcq, the others go on
    assert len(many) == 300 and sum(t.set == "mcq" for t in many) == len(FACTS)


# --- users' task files -------------------------------------------------------------------


def test_a_task_file_of_every_kind(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text(
        '{"prompt": "What is 6 x 7?", "answer": 42}\n'
        "\n"
        '{"id": "half", "prompt": "Half of 1.5?", "answer": 0.75}\n'
        '{"prompt": "Three quarters?", "answer": "3/4"}\n'
        '{"prompt": "Capital of Italy?", "choices": ["Rome", "Oslo", "Lima"], "answer": "a"}\n'
        '{"prompt": "Capital of Peru?", "choices": ["Rome", "Oslo", "Lima"], "answer": "Lima"}\n'
        '{"prompt": "Three colours.", "check": {"words": 3, "no_commas": true}}\n',
        encoding="utf-8")
    tasks = read_task_file(path)
    assert [t.id for t in tasks] == ["line-1", "half", "line-4", "line-5", "line-6", "line-7"]
    assert [t.kind for t in tasks] == ["number", "number", "number", "choice", "choice", "check"]
    assert [t.answer for t in tasks[:5]] == ["42", "0.75", "0.75", "A", "C"]
    assert tasks[3].prompt == ("Capital of Italy?\nA. Rome\nB. Oslo\nC. Lima\n"
                               "Answer with the letter of the correct choice.")
    assert tasks[0].prompt == "What is 6 x 7?"  # the user's prompt as written
    assert all(t.set == "file" for t in tasks)
    # the file's own answers score right, and wrong ones wrong
    replies = ["42", "Answer: .75", "0.75", "A", "(C)", "red blue green"]
    assert [score(t, r).correct for t, r in zip(tasks, replies, strict=True)] == [True] * 6
    wrong = ["41", "0.7", "3/5", "B", "Rome", "red, blue, green"]
    assert [score(t, r).correct for t, r in zip(tasks, wrong, strict=True)] == [False] * 6
    assert len(load_tasks(str(path), limit=2)) == 2


@pytest.mark.parametrize(("line", "fragment"), [
    ("{oops}", "not valid JSON (Expecting property name enclosed in double quotes at column 2)"),
    ('["a"]', "a task is a JSON object"),
    ('{"answer": 4}', 'needs a non-empty "prompt" string'),
    ('{"prompt": "  ", "answer": 4}', 'needs a non-empty "prompt" string'),
    ('{"prompt": "hi"}', 'needs "answer" (a number), "choices" with "answer" (a letter), or a '
     '"check"'),
    ('{"prompt": "hi", "answer": 4, "check": {"words": 1}}', 'give "answer" or "check", not both'),
    ('{"prompt": "hi", "answr": 4}', 'unknown key "answr"'),
    ('{"prompt": "hi", "answer": "four"}', '"answer" must be a number'),
    ('{"prompt": "hi", "answer": true}', '"answer" must be a number'),
    ('{"prompt": "hi", "answer": null}', '"answer" must be a number'),
    ('{"prompt": "hi", "choices": ["a"], "answer": "A"}', '"choices" must be a list of 2 to 26'),
    ('{"prompt": "hi", "choices": "ab", "answer": "A"}', '"choices" must be a list of 2 to 26'),
    ('{"prompt": "hi", "choices": ["a", "A"], "answer": "A"}', "the same choice twice"),
    ('{"prompt": "hi", "choices": ["a", "b"], "answer": "C"}',
     '"answer" must be the letter of a choice (A to B)'),
    ('{"prompt": "hi", "choices": ["a", "b"], "check": {"words": 1}}',
     '"choices" go with "answer"'),
    ('{"prompt": "hi", "check": {"wordz": 1}}', 'unknown rule "wordz"'),
    ('{"prompt": "hi", "check": {"words": -1}}', 'rule "words" takes a whole number'),
    ('{"prompt": "hi", "answer": 1, "id": 7}', '"id" must be a non-empty string'),
])
def test_bad_task_lines(line: str, fragment: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_task(line, "line-1")
    assert fragment in str(caught.value)


def test_bad_files_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"prompt": "a", "answer": 1}\n\n{"prompt": "b"}\n', encoding="utf-8")
    with pytest.raises(UsageError, match=rf"^{re.escape(str(path))}:3: needs \"answer\""):
        read_task_file(path)
    path.write_text('{"id": "x", "prompt": "a", "answer": 1}\n'
                    '{"id": "x", "prompt": "b", "answer": 2}\n', encoding="utf-8")
    with pytest.raises(UsageError, match=r't.jsonl:2: the id "x" is also on line 1'):
        read_task_file(path)
    path.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(UsageError, match="no tasks in the file"):
        read_task_file(path)
    path.write_bytes(b'{"prompt": "\xff"}\n')
    with pytest.raises(UsageError, match="not UTF-8"):
        read_task_file(path)
    with pytest.raises(UsageError, match="no task set of that name and no such file"):
        load_tasks(str(tmp_path / "missing.jsonl"))
    with pytest.raises(UsageError, match="--limit 0: give at least 1"):
        load_tasks("mixed", limit=0)
