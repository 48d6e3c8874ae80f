"""Contenders (localmoa/eval/contenders.py): which exist, which share a run, how each
reads a run's report, and the timing rule. Reports are built by hand: no model."""

from __future__ import annotations

from pathlib import Path

import pytest

from localmoa.config import load_config
from localmoa.errors import UsageError
from localmoa.eval.contenders import (
    KINDS,
    build_contenders,
    loading_s,
    parse_kinds,
    single_graph,
)
from localmoa.eval.runner import ROUND_SEED_STEP, prepare, reread, reseed, schedule
from localmoa.eval.tasks import Task
from localmoa.metrics import AgentRun, RunReport
from localmoa.recipe import Overrides, build_graph
from localmoa.selection import judge

from .conftest import cli

TASK = Task(id="t1", set="arith", prompt="What is 40 + 2?", kind="number", answer="42")
ALL = tuple(k.name for k in KINDS if k.name != "staircase")  # (its own test below)


def agent(name: str, answer: str, *, layer: int = 1, ok: bool = True, tokens: int = 10,
          start: float = 1.0, end: float = 2.0, load_s: float = 0.0,
          load_start_s: float | None = None) -> AgentRun:
    return AgentRun(agent=name, model="m", layer=layer,
                    role="aggregator" if name == "AGG" else "proposer", ok=ok,
                    answer=answer if ok else "", error=None if ok else "boom",
                    completion_tokens=tokens, start_s=start, end_s=end, load_s=load_s,
                    load_start_s=load_start_s)


def report(runs: list[AgentRun], wall_s: float, answer: str = "",
           error: str | None = None) -> RunReport:
    return RunReport.build(profile="p", prompt=TASK.prompt, answer=answer, runs=runs,
                           wall_s=wall_s, cores=2, models={}, error=error)


@pytest.fixture(scope="module")
def tiny_contenders() -> dict:
    config = load_config()
    found = build_contenders(config, ["tiny", "tiny-self"], ALL, 4, Overrides(seed=1234))
    return {c.name: c for c in found}


def test_contenders_of_tiny_and_tiny_self(tiny_contenders: dict) -> None:
    assert list(tiny_contenders) == [
        "single:smollm2-135m", "vote:tiny", "self-consistency:smollm2-135m:4",
        "self-moa:smollm2-135m:4", "moa:tiny", "consensus:tiny", "select:confidence:tiny",
        "select:judge:tiny", "select:verify:tiny", "vote:tiny-self", "moa:tiny-self",
        "consensus:tiny-self", "select:confidence:tiny-self", "select:judge:tiny-self",
        "select:verify:tiny-self"]
    c = tiny_contenders
    # selectors read the profile's own run; the judge is a run of its own
    assert c["select:confidence:tiny"].run == c["select:verify:tiny"].run == "tiny"
    judged = c["select:judge:tiny"].graph
    assert judged.profile == "select:judge:tiny" and judged.select.by == "judge"
    assert judged.aggregator.json_schema == judge.schema_text(3)
    assert c["select:confidence:tiny"].budget() == {"calls": 3, "max_tokens": 3 * 128}
    # one run, two contenders: a profile's run gives its vote and its MoA ...
    assert c["vote:tiny"].run == c["moa:tiny"].run == "tiny"
    # ... and one Self-MoA run gives self-consistency and Self-MoA
    assert c["self-consistency:smollm2-135m:4"].run == c["self-moa:smollm2-135m:4"].run
    assert len({x.run for x in c.values()}) == 8  # consensus and judge runs are their own
    assert c["consensus:tiny"].graph.aggregate == "auto"
    assert c["moa:tiny"].graph.aggregate == "always"
    assert c["vote:tiny"].budget() == {"calls": 3, "max_tokens": 3 * 128}
    assert c["moa:tiny"].budget() == {"calls": 4, "max_tokens": 3 * 128 + 192}
    assert c["self-consistency:smollm2-135m:4"].budget()["calls"] == 4
    assert c["self-moa:smollm2-135m:4"].budget()["calls"] == 5
    assert c["vote:tiny-self"].budget()["calls"] == 6
    single = c["single:smollm2-135m"].graph
    assert single.layers == [] and single.aggregator.id == "AGG"
    assert single.aggregator.temperature == 0.3  # tiny's aggregator settings
    assert single.aggregator.seed == 1234 + 3  # its seed from --seed, as in the profile


def test_single_graph_of_a_proposer_model() -> None:
    config = load_config()
    graph = build_graph(config, "tiny", Overrides(seed=5, proposers=("smollm2-135m",),
                                                  aggregator="qwen2.5-3b"))
    alone = single_graph(graph, "smollm2-135m")
    assert alone.profile == "single:smollm2-135m" and alone.models == ["smollm2-135m"]
    assert (alone.aggregator.layer, alone.aggregator.temperature) == (1, 0.7)  # L1.1's


def test_parse_kinds() -> None:
    assert parse_kinds(None) == (*ALL[:6], "staircase", *ALL[6:])  # every kind
    assert parse_kinds("moa, single") == ("single", "moa")  # KINDS order
    for bad, fragment in [("best", "no kind 'best'"), (",", "name at least one")]:
        with pytest.raises(UsageError, match=fragment):
            parse_kinds(bad)


def test_only_the_kinds_asked_for() -> None:
    found = build_contenders(load_config(), ["tiny"], ("vote",), 4, Overrides())
    assert [c.name for c in found] == ["vote:tiny"]


def test_prepare_plans_each_graph_once_widest_first(tiny_contenders: dict) -> None:
    prepared = prepare(load_config(), list(tiny_contenders.values()))
    assert list(prepared.graphs) == ["tiny-self", "consensus:tiny-self",
                                     "select:judge:tiny-self", "self:smollm2-135m", "tiny",
                                     "consensus:tiny", "select:judge:tiny",
                                     "single:smollm2-135m"]
    assert set(prepared.preflights) == set(prepared.graphs)
    assert [c.name for c in prepared.readers["tiny"]] == [
        "vote:tiny", "moa:tiny", "select:confidence:tiny", "select:verify:tiny"]
    assert [c.name for c in prepared.contenders] == list(tiny_contenders)
    # tiny-self's six samples, and its aggregator reading along in their batch
    assert prepared.widest == {"smollm2-135m": 7}
    assert prepared.interleaved  # one small model: it stays loaded for every graph
    order = list(prepared.graphs)
    assert schedule(prepared, 2, 2) == [
        *[(0, g, 0) for g in order], *[(0, g, 1) for g in reversed(order)],
        *[(1, g, 0) for g in order], *[(1, g, 1) for g in reversed(order)]]


def test_graphs_run_one_after_another_when_their_models_do_not_fit_together(
        tmp_path: Path, gemma_path: Path) -> None:
    duo = tmp_path / "duo.yaml"
    duo.write_text(f"""\
models:
  gemma: {{backend: llamacpp, source: {{path: {gemma_path}}}, n_ctx: 512}}
profiles:
  duo:
    layers: [[{{model: smollm2-135m}}, {{model: gemma}}]]
    aggregator: {{model: smollm2-135m}}
""", encoding="utf-8")
    config = load_config(duo)
    singles = build_contenders(config, ["duo"], ("single",), 4, Overrides())
    assert [c.name for c in singles] == ["single:smollm2-135m", "single:gemma"]
    assert prepare(config, singles).interleaved
    # 203 MiB and 355 MiB fit one at a time in 400 MiB, not together
    prepared = prepare(config, singles, "400MiB")
    assert not prepared.interleaved
    assert schedule(prepared, 2, 1) == [(0, "single:smollm2-135m", 0),
                                         (0, "single:smollm2-135m", 1),
                                         (0, "single:gemma", 0), (0, "single:gemma", 1)]


def test_reseed_moves_every_seed_and_keeps_the_ids() -> None:
    graph = build_graph(load_config(), "tiny", Overrides(seed=100))
    moved = reseed(graph, 2 * ROUND_SEED_STEP)
    assert [a.id for a in moved.all_agents()] == [a.id for a in graph.all_agents()]
    assert [a.seed for a in moved.all_agents()] == [
        (a.seed or 0) + 2 * ROUND_SEED_STEP for a in graph.all_agents()]
    assert reseed(graph, 0) is graph


def test_final_answer_and_its_time_without_loading(tiny_contenders: dict) -> None:
    runs = [agent("L1.1", "41", load_s=0.5, load_start_s=0.0, start=0.5, end=2.0),
            agent("L1.2", "42", start=0.5, end=2.5),
            agent("AGG", "The answer is 42.", layer=2, start=2.5, end=4.0, tokens=5)]
    got = tiny_contenders["moa:tiny"].read(TASK, report(runs, 4.0, "The answer is 42."))
    assert (got["raw"], got["extracted"], got["correct"], got["why"]) == (
        "The answer is 42.", "42", True, "")
    assert (got["tokens"], got["seconds"], got["load_s"], got["error"]) == (25, 3.5, 0.5, None)


def test_a_failed_run_is_wrong_whatever_it_wrote(tiny_contenders: dict) -> None:
    runs = [agent("L1.1", "42"), agent("AGG", "", layer=2, ok=False)]
    got = tiny_contenders["moa:tiny"].read(
        TASK, report(runs, 3.0, error="the aggregator (m) failed: boom"))
    assert (got["raw"], got["extracted"], got["correct"]) == ("", None, False)
    assert got["error"] == got["why"][len("run failed: "):] == "the aggregator (m) failed: boom"


def test_vote_reads_the_first_layer(tiny_contenders: dict) -> None:
    runs = [agent("L1.1", "It is 41", end=2.0, tokens=7),
            agent("L1.2", "Answer: 42", end=3.0, tokens=8),
            agent("L1.3", "", ok=False, end=1.0, tokens=0),
            agent("L1.4", "42, surely", end=2.5, tokens=9),
            agent("AGG", "41", layer=2, start=3.0, end=5.0, tokens=20)]
    got = tiny_contenders["vote:tiny"].read(TASK, report(runs, 5.0, "41"))
    assert (got["raw"], got["extracted"], got["correct"], got["votes"]) == (
        "Answer: 42", "42", True, 2)
    # the layer ended at 3.0 s; the aggregator's tokens are not the vote's
    assert (got["seconds"], got["tokens"]) == (3.0, 24)
    assert [(s["agent"], s["extracted"], s["correct"], s["ok"]) for s in got["samples"]] == [
        ("L1.1", "41", False, True), ("L1.2", "42", True, True), ("L1.3", None, False, False),
        ("L1.4", "42", True, True)]


def test_a_vote_tie_goes_to_the_earliest_agent(tiny_contenders: dict) -> None:
    runs = [agent("L1.1", "I do not know"), agent("L1.2", "41"), agent("L1.3", "42"),
            agent("AGG", "42", layer=2)]
    got = tiny_contenders["vote:tiny"].read(TASK, report(runs, 3.0, "42"))
    assert (got["raw"], got["extracted"], got["correct"], got["votes"]) == ("41", "41",
                                                                            False, 1)


def test_a_vote_with_nothing_extracted_keeps_the_first_reply(tiny_contenders: dict) -> None:
    runs = [agent("L1.1", "", ok=False), agent("L1.2", "no idea"), agent("L1.3", "none")]
    got = tiny_contenders["vote:tiny"].read(TASK, report(runs, 3.0, error="x"))
    assert (got["raw"], got["extracted"], got["correct"], got["error"]) == (
        "no idea", None, False, None)
    every_failed = [agent("L1.1", "", ok=False), agent("L1.2", "", ok=False)]
    got = tiny_contenders["vote:tiny"].read(TASK, report(every_failed, 1.0, error="x"))
    assert (got["raw"], got["correct"], got["error"]) == ("", False, "every sample failed")


@pytest.mark.parametrize(("spans", "until", "loading"), [
    ([], 5.0, 0.0),
    ([(0.0, 1.0)], 5.0, 1.0),
    ([(0.0, 1.0), (0.5, 1.0)], 5.0, 1.5),  # overlapping loads count once: [0, 1.5]
    ([(0.0, 1.0), (3.0, 1.0)], 5.0, 2.0),
    ([(0.0, 1.0), (3.0, 1.0)], 3.5, 1.5),  # only loading before `until`
    ([(1.0, 1.0), (0.0, 4.0)], 9.0, 4.0),  # one inside another
])
def test_loading_s(spans: list[tuple[float, float]], until: float, loading: float) -> None:
    runs = [agent(f"L1.{i}", "x", load_start_s=start, load_s=length)
            for i, (start, length) in enumerate(spans)]
    runs.append(agent("AGG", "x", layer=2, load_s=0.7))  # no start: not loaded in this run
    assert loading_s(runs, until) == pytest.approx(loading)


def select_report() -> RunReport:
    runs = [agent("L1.1", "It is 41.", end=2.0), agent("L1.2", "41", end=3.0),
            agent("L1.3", "The answer is 42.", end=2.5)]
    runs[2].model = "b"
    return report(runs, 4.0)


def test_select_confidence_reads_the_profiles_samples() -> None:
    [chosen] = build_contenders(load_config(), ["tiny"], ("select:confidence",), 4,
                                Overrides())
    # model m: 2/2 agree on 41; model b: 1/1 on 42; a tie at 1.0: the first listed (m)
    answer = chosen.read(TASK, select_report())
    assert (answer["raw"], answer["correct"]) == ("It is 41.", False)
    assert answer["selection"]["selector"] == "confidence"
    assert answer["seconds"] >= 3.0 and answer["tokens"] == 30  # its layer's end, its tokens


def test_reread_scores_new_contenders_on_stored_runs() -> None:
    stored = {"settings": {"profiles": ["tiny"], "tasks": "t"}, "tasks": [TASK.to_dict()],
              "runs": [{"run": "tiny", "task": "t1", "round": 0,
                        "report": select_report().to_dict()},
                       {"run": "single:smollm2-135m", "task": "t1", "round": 0,
                        "report": select_report().to_dict()}]}
    kinds = ("vote", "select:confidence", "select:judge")
    found = reread(stored, build_contenders(load_config(), ["tiny"], kinds, 4, Overrides()))
    assert [c["name"] for c in found["contenders"]] == ["vote:tiny", "select:confidence:tiny"]
    assert [a["raw"] for a in found["answers"]] == ["It is 41.", "It is 41."]
    assert [r["run"] for r in found["runs"]] == ["tiny"]  # only the runs read
    with pytest.raises(UsageError, match="none of these contenders reads a stored run"):
        reread(stored, build_contenders(load_config(), ["tiny"], ("select:judge",), 4,
                                        Overrides()))


def test_reread_refuses_what_is_not_a_results_file(tmp_path: Path) -> None:
    bad = tmp_path / "results.json"
    for text, fragment in [("{", "not JSON"), ('{"settings": {}}', "not a results.json")]:
        bad.write_text(text)
        proc = cli("eval", "--reread", str(bad))
        assert proc.returncode == 2 and fragment in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_the_staircase_contender_is_the_profile_writing_while_its_proposers_write() -> None:
    [found] = build_contenders(load_config(), ["tiny"], ("staircase",), 4, Overrides(seed=1))
    assert found.name == "staircase:tiny" and found.run == "staircase:tiny"
    assert found.graph.aggregate == "staircase" and found.graph.stream_references
    assert "staircase" in parse_kinds("staircase,moa")
