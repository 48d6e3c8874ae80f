"""Batched decoding: the Batch meeting point, the text of a sequence, the plan's choice
between a batch and separate instances, and the engine running a batch (scripted
backend: deterministic, waits on events, never on a clock)."""

from __future__ import annotations

import threading

import pytest

from localmoa import engine
from localmoa.backends.base import GenerateOptions
from localmoa.backends.batch import Batch
from localmoa.backends.llamacpp.sampling import Text
from localmoa.backends.llamacpp.token_batch import common_prefix
from localmoa.engine import RunEvents, execute_plan
from localmoa.errors import GenerationError
from localmoa.memory import speed
from localmoa.memory.planner import Instance, plan
from localmoa.recipe import Overrides, build_graph

from .conftest import SAFETY_S
from .scripted import MiB, Script, ScriptedBackend, config, footprint

QUESTION = [{"role": "user", "content": "Which is larger, 9.11 or 9.9?"}]
WAIT_S = SAFETY_S  # only ever reached when the behaviour under test is broken
OPTIONS = GenerateOptions(temperature=0.0, max_tokens=8)


# --- the text of one sequence -------------------------------------------------------

def test_text_holds_back_what_may_start_a_stop_string() -> None:
    text = Text(["</end>"])
    assert text.feed(b"9.9 is larger<") == ("9.9 is larger", False)
    assert text.feed(b"/e") == ("", False)
    assert text.feed(b"nd> never shown") == ("", True)


def test_text_releases_a_false_start_and_flushes_at_the_end() -> None:
    text = Text(["STOP"])
    assert text.feed(b"ST") == ("", False)
    assert text.feed(b"AY") == ("STAY", False)
    assert text.feed(b"S") == ("", False)
    assert text.flush() == "S"


def test_text_never_splits_a_character() -> None:
    text = Text([])
    euro = "€".encode()
    assert text.feed(euro[:2]) == ("", False)
    assert text.feed(euro[2:]) == ("€", False)


def test_common_prefix_leaves_each_prompt_a_token_of_its_own() -> None:
    assert common_prefix([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9]]) == 2
    assert common_prefix([[1, 2, 3], [1, 2, 3]]) == 2  # the last one is decoded per sequence
    assert common_prefix([[1, 2, 3]]) == 0  # alone: nothing to share


# --- the meeting point ----------------------------------------------------------------

def test_the_driver_waits_until_every_member_joined_or_withdrew() -> None:
    batch = Batch(3, "m#0")
    got: list[int] = []
    driver = threading.Thread(target=lambda: got.append(len(batch.sequences())))
    driver.start()
    batch.chat(QUESTION, OPTIONS)
    batch.withdraw()
    assert not got  # one member still to come
    batch.chat(QUESTION, OPTIONS)
    driver.join(WAIT_S)
    assert got == [2]
    with pytest.raises(GenerationError, match="already started"):
        batch.chat(QUESTION, OPTIONS)


def test_a_failed_batch_fails_every_member_with_its_reason() -> None:
    batch = Batch(2, "m#0")
    stream = batch.chat(QUESTION, OPTIONS)
    batch.fail("model m crashed")
    with pytest.raises(GenerationError, match="model m crashed"):
        stream.text()
    with pytest.raises(GenerationError, match="model m crashed"):
        batch.chat(QUESTION, OPTIONS)  # the one still to join


def test_closing_a_stream_never_read_takes_its_sequence_out() -> None:
    batch = Batch(2, "m#0")
    first = batch.chat(QUESTION, OPTIONS)
    batch.chat(QUESTION, OPTIONS)
    seqs = batch.sequences()
    first.close()
    assert seqs[0].wants_stop() and not seqs[1].wants_stop()


def test_a_sequence_left_unfinished_by_the_driver_fails() -> None:
    batch = Batch(1, "m#0")
    stream = batch.chat(QUESTION, OPTIONS)
    batch.sequences()
    batch.close()
    with pytest.raises(GenerationError, match="without finishing"):
        stream.text()


# --- the plan ---------------------------------------------------------------------------

def _graph(n: int, model: str = "m", max_tokens: int = 64):
    cfg = config({model: {}}, [[{"model": model}] * n], {"model": model})
    return build_graph(cfg, "p", Overrides(max_tokens=max_tokens))


def test_agents_of_one_model_become_one_batch() -> None:
    p = plan(_graph(3), {"m": footprint("m", 100, 20, seq_mib=10)}, {"ram": 10_000 * MiB}, 2)
    first = p.waves[0]
    assert first.batches == {"m": 3} and "batched x3" in first.choices["m"]
    assert {(t.slot, t.batch, t.threads) for t in first.tasks} == {(0, 3, 2)}  # one unit
    assert first.loads == [Instance("m", 0)] and first.loads[0].seqs == 3
    assert first.resident_bytes["ram"] == 120 * MiB  # 100 + 2 further sequences x 10
    # the aggregator runs alone on the same instance: no reload
    assert p.loads == 1 and p.waves[1].tasks[0].batch == 1


def test_without_batching_each_agent_has_its_instance() -> None:
    p = plan(_graph(3), {"m": footprint("m", 100, 20)}, {"ram": 10_000 * MiB}, 2)
    assert p.waves[0].batches == {}
    assert sorted(t.slot for t in p.waves[0].tasks) == [0, 1, 2]
    assert p.waves[0].resident_bytes["ram"] == 140 * MiB


def test_a_batch_too_big_for_the_budget_is_split_into_waves() -> None:
    fp = {"m": footprint("m", 100, 60, seq_mib=30)}
    p = plan(_graph(4), fp, {"ram": 170 * MiB}, 2)  # 3 sequences fit (160), 4 do not
    proposers = [w for w in p.waves if w.layer == 1]
    assert [w.batches.get("m", 1) for w in proposers] == [3, 1]
    assert max(p.peak_bytes.values()) <= 170 * MiB


def test_room_for_the_widest_batch_is_loaded_once() -> None:
    cfg = config({"m": {}}, [[{"model": "m"}] * 2, [{"model": "m"}] * 3], {"model": "m"})
    graph = build_graph(cfg, "p", Overrides(max_tokens=64))
    p = plan(graph, {"m": footprint("m", 100, 20, seq_mib=10)}, {"ram": 10_000 * MiB}, 2)
    assert p.loads == 1 and p.waves[0].loads[0].seqs == 3
    assert [w.batches.get("m", 1) for w in p.waves] == [2, 3, 1]


def test_a_daemon_gets_no_more_agents_at_once_than_its_parallel() -> None:
    fp = footprint("m", 100, 0)
    from dataclasses import replace
    fp = replace(fp, local=False, parallel_limit=2)
    p = plan(_graph(5), {"m": fp}, {"ram": 10_000 * MiB}, 2)
    assert [len(w.tasks) for w in p.waves if w.layer == 1] == [2, 2, 1]


def test_a_lopsided_wave_runs_as_instances_when_that_is_predicted_faster() -> None:
    cfg = config({"m": {}}, [[{"model": "m", "max_tokens": 8},
                              {"model": "m", "max_tokens": 2000},
                              {"model": "m", "max_tokens": 8}]], {"model": "m"})
    graph = build_graph(cfg, "p")
    fp = {"m": footprint("m", 100, 20, seq_mib=10)}
    # on 2 cores, three one-thread instances beat one context, whose second thread adds
    # little, when one agent does nearly all the decoding
    two = plan(graph, fp, {"ram": 10_000 * MiB}, 2).waves[0]
    assert two.batches == {} and "3 instances" in two.choices["m"]
    one = plan(graph, fp, {"ram": 10_000 * MiB}, 1).waves[0]
    assert one.batches == {"m": 3}


def test_predicted_time_prefers_the_batch_on_a_cpu() -> None:
    weights = 100 * MiB
    for n in (2, 3, 6, 12):
        tokens = [96] * n
        assert speed.batched_seconds(weights, tokens, 2) < speed.separate_seconds(
            weights, tokens, 2)
    # sequences that end early stop costing
    assert speed.batched_seconds(weights, [8, 96], 2) < speed.batched_seconds(
        weights, [96, 96], 2)


# --- the engine ---------------------------------------------------------------------------

def _run(cfg, *, events: RunEvents | None = None, max_tokens: int | None = 64,
         cores: int = 2):
    graph = build_graph(cfg, "p", Overrides(max_tokens=max_tokens))
    fps = {m: footprint(m, 100, 20, seq_mib=10) for m in graph.models}
    the_plan = plan(graph, fps, {"ram": 10_000 * MiB}, cores)
    return execute_plan(cfg, graph, QUESTION, the_plan, {}, events=events)


def test_a_batched_wave_reports_its_batch(scripted: ScriptedBackend) -> None:
    cfg = config({"m": {}}, [[{"model": "m"}] * 3], {"model": "m"})
    report = _run(cfg)
    assert report.ok, report.error
    assert scripted.batches == [("m", 3)] and scripted.seqs == [("m", 3)]
    proposers = [r for r in report.agents if r.layer == 1]
    assert [r.batch for r in proposers] == [3, 3, 3]
    assert all(r.answer == "Nine point nine is larger." for r in proposers)
    assert report.layers[0].batch == 3 and report.layers[1].batch == 1
    # the shared prefix (6 of 10 scripted tokens) is evaluated once for the three
    assert report.layers[0].prompt_tokens_evaluated == 3 * 4 + 6
    assert report.plan["batches"] == [{"wave": 1, "layer": 1, "model": "m", "size": 3}]
    assert sum(r.load_s > 0 for r in proposers) == 1  # the load is charged once


def test_a_timed_out_agent_leaves_the_batch_and_the_others_finish(
        scripted: ScriptedBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine.state, "GRACE_S", 30.0)  # it stops at once: never abandoned
    scripted.scripts["m"] = Script(forever_over=100)
    cfg = config({"m": {}}, [[{"model": "m", "max_tokens": 5},
                              {"model": "m", "max_tokens": 1000, "timeout_s": 0.3},
                              {"model": "m", "max_tokens": 5}]], {"model": "m", "max_tokens": 5})
    report = _run(cfg, max_tokens=None, cores=1)  # one core: the planner batches them
    by_id = {r.agent: r for r in report.agents}
    assert [r.batch for r in report.agents[:3]] == [3, 3, 3]
    assert by_id["L1.2"].error == "timed out after 0.3 s (per-agent timeout)"
    assert by_id["L1.2"].answer  # what it wrote is kept
    assert by_id["L1.1"].ok and by_id["L1.3"].ok and by_id["AGG"].ok
    assert report.actual["abandoned_agents"] == 0


def test_a_failing_batch_fails_its_agents_and_the_run_goes_on(
        scripted: ScriptedBackend) -> None:
    scripted.scripts["m"] = Script(fail_after=2)
    cfg = config({"m": {}, "solo": {}}, [[{"model": "m"}, {"model": "m"}, {"model": "solo"}]],
                 {"model": "solo"})
    report = _run(cfg)
    by_id = {r.agent: r for r in report.agents}
    assert "injected failure" in (by_id["L1.1"].error or "")
    assert "injected failure" in (by_id["L1.2"].error or "")
    assert by_id["L1.3"].ok and report.ok  # a layer fails only when all of it does
    assert report.answer


def test_a_batch_whose_model_failed_to_load(scripted: ScriptedBackend) -> None:
    scripted.scripts["m"] = Script(load_error="out of memory")
    cfg = config({"m": {}, "solo": {}}, [[{"model": "m"}, {"model": "m"}, {"model": "solo"}]],
                 {"model": "solo"})
    report = _run(cfg)
    errors = [r.error for r in report.agents if r.model == "m"]
    assert errors == ["model 'm': out of memory"] * 2
    assert report.ok


def test_a_batch_starts_its_sequences_in_their_agents_order_not_as_they_joined() -> None:
    """Agent threads join in any order on a busy machine; a row's place in a step can
    change a near tie, so the loop starts the sequences in the agents' order."""
    batch = Batch(3, "m#0")
    options = GenerateOptions(max_tokens=4)
    for place in (2, 0, 1):  # joined last to first
        batch.member(None, None, None, place).chat([{"role": "user", "content": str(place)}],
                                                   options)
    seqs = batch.sequences()
    assert [s.messages[0]["content"] for s in seqs] == ["0", "1", "2"]
    assert [s.index for s in seqs] == [1, 2, 0]  # (each keeps its join index for replies)
