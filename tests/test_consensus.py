"""The consensus short-cut: when proposers agree (rules in localmoa/consensus.py), the
aggregator is skipped (aggregate: auto) or never run (never: majority vote); early exit
across layers (layers_up_to). Pure rules, the engine with the scripted backend, and the
shipped tiny-auto profile with the real SmolLM2 model."""

from __future__ import annotations

import json

import pytest

from localmoa import consensus
from localmoa.engine import execute_plan
from localmoa.memory.planner import plan
from localmoa.recipe import Overrides, build_graph

from .conftest import cli
from .scripted import MiB, Script, ScriptedBackend, config, footprint

QUESTION = [{"role": "user", "content": "Which is larger, 9.11 or 9.9?"}]


@pytest.mark.parametrize(("answers", "agree", "rule"), [
    (["9.9 is larger.", "**9.9 is larger**", "  9.9   IS larger!"], True, "same text"),
    (["The answer is 42.", "42", "It is 42, since 6 x 7 = 42."], True, "same final number"),
    (["1,234.50", "1234.5"], True, "same final number"),
    (["(B) Paris", "The answer is B", "B."], True, "same choice"),
    (["9.9", "9.11"], False, "no agreement"),
    (["A cat sleeps on the mat.", "A dog barks at night."], False, "no agreement"),
    (["Answer: 7 (5+2)", "Answer: 7"], True, "same final number"),
    (["42"], False, "too few answers"),
    # a long answer's last number is not its answer: only the text counts there
    (["word " * 50 + "1", "other " * 50 + "1"], False, "no agreement"),
])
def test_agreement_rules(answers: list[str], agree: bool, rule: str) -> None:
    found = consensus.agreement(answers)
    assert (found.agree, found.rule) == (agree, rule)


def test_vote_takes_the_most_shared_answer_and_the_first_on_a_tie() -> None:
    voted = consensus.vote(["It is 9.11.", "9.9", "The larger is 9.9"])
    assert (voted.index, voted.count, voted.of) == (1, 2, 3)
    assert voted.rule == "majority, same final number"
    tie = consensus.vote(["A", "B", "B", "A"])
    assert tie.index == 0 and tie.count == 2  # A and B tie: the first agent's wins
    alone = consensus.vote(["one thing", "another thing entirely"])
    assert alone.index == 0 and alone.rule == "first answer (no two agree)"


def run(cfg, overrides: Overrides | None = None):
    graph = build_graph(cfg, "p", overrides or Overrides(max_tokens=64))
    fps = {m: footprint(m) for m in graph.models}
    return graph, execute_plan(cfg, graph, QUESTION, plan(graph, fps, {"ram": 10_000 * MiB}, 2),
                               {})


def test_auto_skips_the_aggregator_when_the_proposers_agree(scripted: ScriptedBackend) -> None:
    cfg = config({"m": {}, "judge": {}}, [[{"model": "m"}, {"model": "m"}]], {"model": "judge"})
    _, report = run(cfg, Overrides(aggregate="auto"))
    assert report.ok and report.answer == "Nine point nine is larger."
    assert [a.agent for a in report.agents] == ["L1.1", "L1.2"]  # no aggregator ran
    assert "judge" not in scripted.loads
    decided = report.recipe["consensus"]
    assert decided["summary"] == "aggregation skipped: 2/2 agree (same text)"
    assert decided["answer_from"] == "L1.1" and decided["estimated_time_saved_s"] > 0


def test_auto_runs_the_aggregator_when_they_disagree(scripted: ScriptedBackend) -> None:
    scripted.scripts["other"] = Script(pieces=("Nine", " point", " one", " one."))
    cfg = config({"m": {}, "other": {}}, [[{"model": "m"}, {"model": "other"}]], {"model": "m"})
    _, report = run(cfg, Overrides(aggregate="auto"))
    assert [a.agent for a in report.agents][-1] == "AGG"
    assert report.recipe["consensus"] == {"aggregation": "ran",
                                          "agreement": "1/2 agree at most"}


def test_never_returns_the_majority_answer(scripted: ScriptedBackend) -> None:
    scripted.scripts["other"] = Script(pieces=("9.11",))
    scripted.scripts["third"] = Script(pieces=("The larger is ", "9.9"))
    scripted.scripts["m"] = Script(pieces=("9.9",))
    cfg = config({"m": {}, "other": {}, "third": {}},
                 [[{"model": "other"}, {"model": "m"}, {"model": "third"}]], {"model": "m"})
    _, report = run(cfg, Overrides(aggregate="never"))
    assert report.answer == "9.9"  # 2 of 3 give 9.9; the first of them is L1.2
    assert report.recipe["consensus"]["answer_from"] == "L1.2"
    assert report.recipe["consensus"]["agreement"] == "2/3 agree (majority, same final number)"
    assert not any(a.is_aggregator for a in report.agents)


def test_early_exit_skips_the_layers_after_agreement(scripted: ScriptedBackend) -> None:
    cfg = config({"m": {}}, [[{"model": "m"}, {"model": "m"}]], {"model": "m"})
    cfg.profiles["p"] = cfg.profiles["p"].model_copy(update={"layers_up_to": 3})
    graph, report = run(cfg)
    assert len(graph.layers) == 3 and graph.early_exit
    assert [a.agent for a in report.agents] == ["L1.1", "L1.2", "AGG"]
    assert report.recipe["early_exit"]["after_layer"] == 1
    assert report.recipe["early_exit"]["layers_skipped"] == 2
    # the aggregator read layer 1's answers
    assert "2. Nine point nine is larger." in scripted.calls[-1][1][0]["content"]


@pytest.mark.slow
def test_tiny_auto_skips_the_aggregator_with_the_real_model() -> None:
    """Temperature-0 proposers on one model agree: the answer is theirs, no aggregator."""
    proc = cli("run", "--profile", "tiny-auto", "--max-tokens", "24", "--json",
               "Which is larger, 9.11 or 9.9?")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert [a["agent"] for a in report["agents"]] == ["L1.1", "L1.2", "L1.3"]
    assert len({a["answer"] for a in report["agents"]}) == 1
    decided = report["recipe"]["consensus"]
    assert decided["summary"].startswith("aggregation skipped: 3/3 agree")
    assert report["answer"] == report["agents"][0]["answer"]
    human = cli("run", "--profile", "tiny-auto", "--max-tokens", "24",
                "Which is larger, 9.11 or 9.9?")
    assert human.returncode == 0 and human.stdout.strip() == report["answer"]
    assert "aggregation skipped: 3/3 agree" in human.stderr


def test_early_exit_reloads_what_the_skipped_waves_would_have_loaded(
        scripted: ScriptedBackend) -> None:
    """One model fits at a time: the aggregator's model was to be loaded by layer 3, which
    early exit skips; the aggregator's wave loads it then, within the plan's budget."""
    cfg = config({"a": {}, "c": {}}, [[{"model": "a"}, {"model": "c"}]], {"model": "c"})
    cfg.profiles["p"] = cfg.profiles["p"].model_copy(update={"layers_up_to": 3})
    graph = build_graph(cfg, "p", Overrides(max_tokens=64))
    fps = {m: footprint(m) for m in graph.models}
    the_plan = plan(graph, fps, {"ram": 150 * MiB}, 2)
    assert not the_plan.waves[-1].loads  # the plan counts on an earlier wave's load
    report = execute_plan(cfg, graph, QUESTION, the_plan, {})
    assert report.recipe["early_exit"]["after_layer"] == 1
    assert report.ok and [a.agent for a in report.agents] == ["L1.1", "L1.2", "AGG"]
