"""Several requests run as one: merged graphs, one batch across requests, each request
with its own conversation, references, cancellation, failure and report. The engine with
the scripted backend; the service with the real SmolLM2 model."""

from __future__ import annotations

import threading

import pytest

from localmoa.config import load_config
from localmoa.engine import RunEvents, execute_jobs
from localmoa.errors import LayerFailedError, RunInterrupted
from localmoa.memory.planner import plan
from localmoa.metrics import RunReport
from localmoa.recipe import Overrides, build_graph, merge_graphs
from localmoa.serve.service import Job, MoaService, Sampling, ServeOptions

from .conftest import SAFETY_S
from .scripted import MiB, Script, ScriptedBackend, config, footprint

WAIT_S = SAFETY_S  # only ever reached when the behaviour under test is broken


def ask(text: str) -> list:
    return [{"role": "user", "content": text}]


def two_requests(cfg, profiles=("p", "p")):
    graphs = [build_graph(cfg, name, Overrides(max_tokens=8)) for name in profiles]
    merged = merge_graphs(graphs)
    fps = {m: footprint(m, seq_mib=5) for m in merged.models}
    return merged, plan(merged, fps, {"ram": 10_000 * MiB}, 2)


def test_merge_graphs_tags_the_second_request() -> None:
    cfg = config({"m": {}}, [[{"model": "m"}, {"model": "m"}]], {"model": "m"})
    merged, _ = two_requests(cfg)
    assert merged.jobs == 2
    assert [a.id for a in merged.layers[0]] == ["L1.1", "L1.2", "1/L1.1", "1/L1.2"]
    assert [a.id for a in merged.stages()[-1]] == ["AGG", "1/AGG"]
    assert all(a.is_aggregator for a in merged.stages()[-1])
    assert [a.local_id for a in merged.layers[0]] == ["L1.1", "L1.2", "L1.1", "L1.2"]
    assert merged.widest() == {"m": 4}
    one_layer = build_graph(cfg, "p", Overrides(layers=2))
    with pytest.raises(ValueError, match="same number of layers"):
        merge_graphs([build_graph(cfg, "p"), one_layer])


def test_two_requests_decode_as_one_batch_each_with_its_own_answers(
        scripted: ScriptedBackend) -> None:
    cfg = config({"m": {"batch": "on"}}, [[{"model": "m"}, {"model": "m"}]], {"model": "m"})
    merged, the_plan = two_requests(cfg)
    assert [w.batches for w in the_plan.waves] == [{"m": 4}, {"m": 2}]
    seen: list[str] = []
    events = RunEvents(on_agent_done=lambda agent, run: seen.append(agent.id))
    outcomes = execute_jobs(cfg, merged, [ask("Question A"), ask("Question B")], the_plan, {},
                            events=events)
    assert all(isinstance(o, RunReport) and o.ok for o in outcomes)
    for outcome, question in zip(outcomes, ("Question A", "Question B"), strict=True):
        assert isinstance(outcome, RunReport)
        assert outcome.prompt == question
        assert [a.agent for a in outcome.agents] == ["L1.1", "L1.2", "AGG"]
        assert outcome.actual["requests_batched"] == 2
    assert scripted.batches == [("m", 4), ("m", 2)]
    # each aggregator read its own request's question, and two references (not four)
    # (the batch's sequences come in the order their agents joined it)
    aggregators = {messages[-1]["content"]: messages for _, messages in scripted.calls[-2:]}
    assert set(aggregators) == {"Question A", "Question B"}
    for messages in aggregators.values():
        assert "2. Nine" in messages[0]["content"] and "3. " not in messages[0]["content"]
    assert sorted(seen) == sorted(a.id for a in merged.all_agents())


def test_a_cancelled_request_stops_while_the_other_goes_on(scripted: ScriptedBackend) -> None:
    scripted.scripts["m"] = Script(pieces=("word ",) * 40)
    cfg = config({"m": {"batch": "on"}}, [[{"model": "m"}, {"model": "m"}]], {"model": "m"})
    merged, the_plan = two_requests(cfg)
    cancel = [threading.Event(), threading.Event()]

    def on_text(agent, piece) -> None:
        if agent.job == 1:
            cancel[1].set()  # request 1's client went away at its first token

    outcomes = execute_jobs(cfg, merged, [ask("A"), ask("B")], the_plan, {},
                            events=RunEvents(on_text=on_text), cancels=cancel)
    first, second = outcomes
    assert isinstance(first, RunReport) and first.ok
    assert [a.agent for a in first.agents] == ["L1.1", "L1.2", "AGG"]
    assert isinstance(second, RunInterrupted)
    assert [a.agent for a in second.report.agents] == ["L1.1", "L1.2"]  # no aggregator
    assert all(not a.ok for a in second.report.agents)
    assert scripted.batches[-1] == ("m", 1)  # request 0's aggregator alone


def test_a_failed_layer_ends_only_its_own_request(scripted: ScriptedBackend) -> None:
    scripted.scripts["bad"] = Script(fail_after=0)
    cfg = config({"m": {}, "bad": {}}, [[{"model": "m"}]], {"model": "m"})
    cfg.profiles["q"] = cfg.profiles["p"].model_copy(update={
        "layers": [[cfg.profiles["p"].layers[0][0].model_copy(update={"model": "bad"})]]})
    merged, the_plan = two_requests(cfg, ("p", "q"))
    first, second = execute_jobs(cfg, merged, [ask("A"), ask("B")], the_plan, {})
    assert isinstance(first, RunReport) and first.ok
    assert isinstance(second, LayerFailedError)
    assert "every agent of layer 1 failed (L1.1: bad: injected failure" in str(second)


@pytest.mark.slow
def test_waiting_requests_for_one_model_share_a_batch_in_serve() -> None:
    """Three requests for SmolLM2 by itself wait while a profile's request sits between
    them: the three run as one batch of three sequences, the profile's alone."""
    service = MoaService(load_config(), ServeOptions(queue_size=8), start=False)
    try:
        prompts = ["Say hi.", "Name three colours of the rainbow, please.",
                   "What is the capital of France? Answer in one word."]
        texts: dict[int, list[str]] = {i: [] for i in range(3)}
        jobs = []
        for i, prompt in enumerate(prompts):
            events = RunEvents(on_text=lambda agent, piece, i=i: texts[i].append(agent.id))
            jobs.append(Job(model="smollm2-135m", messages=ask(prompt), events=events,
                            sampling=Sampling(temperature=0.0, max_tokens=12)))
        profile_job = Job(model="moa:tiny", messages=ask("Hi"),
                          sampling=Sampling(temperature=0.0, max_tokens=4))
        for job in (jobs[0], profile_job, jobs[1], jobs[2]):
            service.submit(job)
        service.start()
        for job in (*jobs, profile_job):
            assert job.done.wait(WAIT_S)
        for i, job in enumerate(jobs):
            assert job.error is None and job.report is not None and job.report.answer
            assert job.report.actual["requests_batched"] == 3
            [agg] = job.report.agents
            assert agg.agent == "AGG" and agg.batch == 3
            assert set(texts[i]) == {"AGG"}  # its own stream, under its own ids
        tokens = [job.report.agents[0].prompt_tokens for job in jobs if job.report]
        assert tokens[0] < tokens[1] and tokens[0] < tokens[2]  # each read its own prompt
        assert profile_job.report is not None and profile_job.error is None
        assert "requests_batched" not in profile_job.report.actual
        assert service.counters.batched == 3 and service.counters.requests == 4
    finally:
        service.close(timeout_s=30)


def test_a_run_after_a_wider_merged_run_plans_with_its_instance(
        scripted: ScriptedBackend, smollm2_path) -> None:
    """Two merged requests leave an instance with room for 4 sequences; the next request
    alone (a batch of 2) plans with that instance loaded, and reuses it."""
    cfg = config({"m": {}}, [[{"model": "m"}, {"model": "m"}]], {"model": "m"},
                 smollm2_path)
    service = MoaService(cfg, ServeOptions(queue_size=8), start=False)
    try:
        first = [Job(model="moa:p", messages=ask(q)) for q in ("A", "B")]
        for job in first:
            service.submit(job)
        service.start()
        assert all(job.done.wait(WAIT_S) for job in first)
        assert all(job.error is None for job in first), [str(j.error) for j in first]
        assert service.host.resident_seqs() == {"m": 4}
        alone = service.submit(Job(model="moa:p", messages=ask("C")))
        assert alone.done.wait(WAIT_S)
        assert alone.error is None, str(alone.error)
        assert alone.report is not None and alone.report.actual["loads"] == 0
    finally:
        service.close(timeout_s=30)
