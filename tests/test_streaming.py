"""Reference streaming: the aggregator starts with the proposers' wave and reads each
answer as its proposer ends. The plan's overlap (pure: memory/overlap.py), the feed of
references (engine/streaming.py), and real runs of the tiny profile (SmolLM2 from PyPI)."""

from __future__ import annotations

import dataclasses
import json

import jsonschema
import pytest

from localmoa import load_config
from localmoa.cancel import Cancel
from localmoa.engine import execute_plan
from localmoa.engine.streaming import References
from localmoa.memory.overlap import streamed_plan as plan
from localmoa.memory.planner import Instance, Plan, Task, Wave
from localmoa.metrics import AgentRun
from localmoa.prompts import TRIM_MARK
from localmoa.recipe import Overrides, build_graph

from .conftest import cli, run_json
from .scripted import MiB, config, footprint
from .test_run import SCHEMA, write_config

LONG = "Explain in detail, in at least 200 words, why the sky is blue, with examples."

QUESTION = "Which is larger, 9.11 or 9.9?"
BIG = {"ram": 10_000 * MiB}


def streams(fp):
    return dataclasses.replace(fp, streams=True)


def graph_of(layer: list[str], aggregator: str, **overrides):
    models = {m: {} for m in [*layer, aggregator]}
    cfg = config(models, [[{"model": m, "max_tokens": 64} for m in layer]],
                 {"model": aggregator, "max_tokens": 64})
    return build_graph(cfg, "p", Overrides(**overrides))


# --- the plan ------------------------------------------------------------------------

def test_the_aggregator_joins_its_models_batch_with_room_for_one_more() -> None:
    g = graph_of(["m", "m", "m"], "m")
    p = plan(g, {"m": streams(footprint("m", 100, 20, seq_mib=10))}, BIG, 2)
    assert p.streaming["on"] and len(p.waves) == 1
    [wave] = p.waves
    assert [(t.agent, t.batch, t.follows) for t in wave.tasks] == [
        ("L1.1", 4, False), ("L1.2", 4, False), ("L1.3", 4, False), ("AGG", 4, True)]
    assert wave.loads[0].seqs == 4 and wave.unloads == wave.loads
    assert p.peak_bytes["ram"] == wave.resident_bytes["ram"] == 130 * MiB


def test_a_lone_proposer_and_the_aggregator_on_its_model_become_a_batch_of_two() -> None:
    g = graph_of(["m", "s", "s"], "m")
    fps = {"m": streams(footprint("m", 100, 20, seq_mib=10)),
           "s": streams(footprint("s", 50, 10, seq_mib=5))}
    p = plan(g, fps, BIG, 2)
    assert p.streaming["on"] and len(p.waves) == 1
    by_agent = {t.agent: t for t in p.waves[0].tasks}
    assert (by_agent["L1.1"].batch, by_agent["AGG"].batch) == (2, 2)
    assert by_agent["AGG"].follows and by_agent["AGG"].slot == by_agent["L1.1"].slot


def test_another_model_follows_only_with_a_core_to_spare() -> None:
    g = graph_of(["s", "s"], "m")
    fps = {"m": streams(footprint("m", 100, 20)), "s": streams(footprint("s", 50, 10,
                                                                        seq_mib=5))}
    busy = plan(g, fps, BIG, 2)  # the proposers' batch takes both cores
    assert not busy.streaming["on"] and "no core is free" in busy.streaming["why"]
    assert len(busy.waves) == 2
    # proposers on a server (an Ollama daemon, an OpenAI-compatible one) use no core here
    g2 = graph_of(["r", "r"], "m")
    fps["r"] = dataclasses.replace(footprint("r", 50, 10), local=False)
    spare = plan(g2, fps, BIG, 2)
    assert spare.streaming["on"], spare.streaming
    agg = next(t for t in spare.waves[0].tasks if t.follows)
    assert agg.threads == 2 and agg.batch == 1 and spare.waves[0].loads[-1].model == "m"


def test_the_plan_never_goes_past_the_budget_to_stream() -> None:
    g = graph_of(["m", "m", "m"], "m")
    fps = {"m": streams(footprint("m", 100, 20, seq_mib=10))}
    p = plan(g, fps, {"ram": 125 * MiB}, 2)  # three sequences fit (120), four do not
    assert not p.streaming["on"] and "does not fit beside" in p.streaming["why"]
    assert len(p.waves) == 2 and p.peak_bytes["ram"] <= 125 * MiB


@pytest.mark.parametrize(("overrides", "why"), [
    ({"stream_references": False}, "stream_references is off"),
    ({"aggregate": "auto"}, "aggregate: auto decides"),
    ({"max_tokens": 800}, "may not fit"),
])
def test_streaming_falls_back_with_the_reason(overrides: dict, why: str) -> None:
    g = graph_of(["m", "m"], "m", **overrides)
    p = plan(g, {"m": streams(footprint("m", 100, 20, seq_mib=10))}, BIG, 2)
    assert not p.streaming["on"] and why in p.streaming["why"]
    assert [w.layer for w in p.waves] == [1, 2]


def test_a_backend_that_takes_whole_prompts_never_streams() -> None:
    g = graph_of(["m", "m"], "m")
    p = plan(g, {"m": footprint("m", 100, 20, seq_mib=10)}, BIG, 2)
    assert not p.streaming["on"] and "only whole" in p.streaming["why"]


# --- the references as they come ------------------------------------------------------

def agents_of(n: int):
    g = graph_of(["m"] * n, "m")
    return g.layers[0], g.aggregator


def run_of(agent, answer: str, ok: bool = True) -> AgentRun:
    return AgentRun(agent=agent.id, model=agent.model, layer=1, role="proposer", ok=ok,
                    answer=answer)


def test_references_come_in_finishing_order_with_the_defaults_numbered_text() -> None:
    proposers, agg = agents_of(3)
    refs = References(agg, proposers, Cancel())
    refs.ended(proposers[2], run_of(proposers[2], "third ended first"))
    assert refs.feed.since(0) == (["1. third ended first"], False)
    # one proposer is left: what it wrote streams in as it writes (whitespace around it
    # dropped, as its answer is stripped)
    refs.text(proposers[1], "  slow ")
    refs.ended(proposers[0], run_of(proposers[0], "first"))
    refs.text(proposers[1], "one  ")
    assert refs.feed.text() == "1. third ended first\n2. first\n3. slow one"
    assert not refs.feed.since(0)[1]
    refs.ended(proposers[1], run_of(proposers[1], "slow one"))
    assert refs.feed.since(0)[1] and refs.order == ["L1.3", "L1.1", "L1.2"]
    assert refs.feed.text() == "1. third ended first\n2. first\n3. slow one"


def test_a_failed_proposer_is_not_read_and_the_last_cut_short_is_marked() -> None:
    proposers, agg = agents_of(3)
    refs = References(agg, proposers, Cancel())
    refs.ended(proposers[0], run_of(proposers[0], "", ok=False))
    refs.ended(proposers[1], run_of(proposers[1], "an answer"))
    refs.text(proposers[2], "half an")
    refs.ended(proposers[2], run_of(proposers[2], "half an", ok=False))
    assert refs.feed.text() == "1. an answer\n2. half an" + TRIM_MARK
    assert refs.order == ["L1.2", "L1.3"]


def test_when_every_proposer_fails_the_aggregator_is_stopped() -> None:
    proposers, agg = agents_of(2)
    cancel = Cancel()
    refs = References(agg, proposers, cancel)
    for p in proposers:
        refs.ended(p, run_of(p, "", ok=False))
    assert refs.feed.since(0) == ([], True)
    assert cancel.is_set() and "every agent of layer 1 failed" in cancel.reason


# --- real runs ------------------------------------------------------------------------

def test_tiny_streams_references_into_the_aggregator_of_the_same_batch() -> None:
    doc = run_json(QUESTION, "--max-tokens", "48", "--seed", "3")
    jsonschema.validate(doc, SCHEMA)
    assert doc["ok"] and doc["answer"].strip()
    assert doc["plan"]["streaming"]["on"] and doc["plan"]["waves"] == 1
    proposers, agg = doc["agents"][:3], doc["agents"][3]
    # one batch of four: the aggregator started with the proposers, before the last ended
    assert {a["batch"] for a in doc["agents"]} == {4} and agg["wave"] == 1
    assert agg["start_s"] < max(p["end_s"] for p in proposers)
    latency = doc["latency"]
    assert latency["references_streamed"]
    assert sorted(latency["reference_order"]) == ["L1.1", "L1.2", "L1.3"]
    assert latency["reference_order"] == agg["reference_order"]
    assert latency["references_prefilled_early_tokens"] == agg["early_prompt_tokens"]
    assert latency["aggregator_first_text_after_references_s"] is not None


def test_no_stream_references_runs_the_aggregator_after_the_layer() -> None:
    doc = run_json(QUESTION, "--max-tokens", "32", "--seed", "3", "--no-stream-references")
    jsonschema.validate(doc, SCHEMA)
    assert not doc["plan"]["streaming"]["on"] and doc["plan"]["waves"] == 2
    agg = doc["agents"][3]
    assert agg["wave"] == 2 and agg["batch"] == 1 and agg["reference_order"] is None
    assert agg["start_s"] >= max(a["end_s"] for a in doc["agents"][:3])
    assert doc["latency"]["reference_order"] == ["L1.1", "L1.2", "L1.3"]
    assert doc["latency"]["references_prefilled_early_tokens"] == 0


def test_a_profile_can_turn_streaming_off(tmp_path) -> None:
    cfg = write_config(tmp_path, """\
profiles:
  whole:
    stream_references: off
    layers: [[{model: smollm2-135m}, {model: smollm2-135m}]]
    aggregator: {model: smollm2-135m}
""")
    proc = cli("plan", "--config", str(cfg), "--profile", "whole")
    assert proc.returncode == 0, proc.stderr
    assert "reference streaming off: stream_references is off" in " ".join(proc.stdout.split())
    proc = cli("plan", "--config", str(cfg), "--profile", "whole", "--stream-references",
               "--json")
    assert json.loads(proc.stdout)["plan"]["streaming"]["on"]


def test_plan_shows_the_fallback_when_the_aggregator_cannot_fit_beside() -> None:
    on = json.loads(cli("plan", "--json").stdout)["plan"]
    assert on["streaming"]["on"]
    budget = on["waves"][0]["resident_bytes"]["ram"] - 1  # one byte short of streaming
    proc = cli("plan", "--memory-budget", str(budget))
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    assert "reference streaming off" in text and "does not fit beside" in text


def test_when_every_proposer_fails_the_streamed_run_ends_with_the_layers_error(
        tmp_path) -> None:
    cfg = write_config(tmp_path, """\
profiles:
  hasty:
    layers: [[{model: smollm2-135m, timeout_s: 0.001, max_tokens: 256},
              {model: smollm2-135m, timeout_s: 0.001, max_tokens: 256}]]
    aggregator: {model: smollm2-135m}
""")
    proc = cli("run", "Write a long story about a lighthouse.", "--config", str(cfg),
               "--profile", "hasty", "--json")
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["plan"]["streaming"]["on"]
    assert "every agent of layer 1 failed" in doc["error"]
    agg = doc["agents"][-1]
    assert not agg["ok"] and "every agent of layer 1 failed" in agg["error"]



def test_the_last_batch_left_in_a_wave_gets_every_core(smollm2_path, tmp_path,
                                                      monkeypatch) -> None:
    """Two proposers and the aggregator as a batch on one instance, the third proposer on
    another with one token to write: once it is done, the batch is all that is left of
    the wave and decodes with every core (before its proposers end)."""
    log = tmp_path / "events.jsonl"
    monkeypatch.setenv("LOCALMOA_EVENT_LOG", str(log))
    cfg = load_config()
    graph = build_graph(cfg, "tiny", Overrides(max_tokens=48, temperature=0.0))
    graph.layers[0][2] = dataclasses.replace(graph.layers[0][2], max_tokens=1)
    model = graph.aggregator.model
    first, second, alone = (a.id for a in graph.layers[0])
    tasks = [Task(first, model, 0, 1, batch=3), Task(second, model, 0, 1, batch=3),
             Task(graph.aggregator.id, model, 0, 1, batch=3, follows=True),
             Task(alone, model, 1, 1)]
    wave = Wave(index=1, layer=1, tasks=tasks, loads=[Instance(model, 0, 3), Instance(model, 1)],
                unloads=[Instance(model, 0, 3), Instance(model, 1)], batches={model: 3})
    the_plan = Plan(waves=[wave], budgets={}, peak_bytes={}, cores=2,
                    streaming={"on": True, "wave": 1})
    report = execute_plan(cfg, graph, [{"role": "user", "content": LONG}], the_plan,
                          {model: smollm2_path})
    assert report.ok and report.answer.strip()
    events = [json.loads(line) for line in log.read_text().splitlines()]
    threads = [e for e in events if e["event"] == "threads"]
    assert threads == [dict(threads[0], instance=f"{model}#0", threads=2)]
    at = events.index(threads[0])  # (logged before the agent_done that caused it)
    ended = [e["agent"] for e in events[:at] if e["event"] == "agent_done"]
    ended.append(next(e["agent"] for e in events[at:] if e["event"] == "agent_done"))
    assert ended == [alone]
