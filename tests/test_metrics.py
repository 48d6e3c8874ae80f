"""Per-layer and total figures derived from agent runs (pure)."""

from __future__ import annotations

from localmoa.metrics import AgentRun, RunReport, latency_of


def make(agent: str, layer: int, tokens: int, start: float, end: float, ok: bool = True,
         load: float = 0.0) -> AgentRun:
    return AgentRun(agent=agent, model="m", layer=layer,
                    role="aggregator" if agent == "AGG" else "proposer", ok=ok,
                    answer="x" if ok else "", error=None if ok else "boom",
                    completion_tokens=tokens, prompt_tokens=10, start_s=start, end_s=end,
                    load_s=load, threads=1)


def test_layer_stats_and_totals() -> None:
    runs = [make("L1.1", 1, 30, 1.0, 3.0, load=0.5), make("L1.2", 1, 50, 1.0, 5.0),
            make("L1.3", 1, 0, 1.5, 1.5, ok=False), make("AGG", 2, 40, 5.0, 7.0)]
    report = RunReport.build(profile="p", prompt="q", answer="x", runs=runs, wall_s=8.0,
                             cores=2, models={})
    l1, l2 = report.layers
    assert (l1.layer, l1.agents, l1.failed) == (1, 3, 1)
    assert l1.completion_tokens == 80
    assert l1.wall_s == 4.0 and l1.agg_tok_per_s == 20.0
    assert l1.load_s == 0.5
    assert (l2.role, l2.completion_tokens, l2.wall_s) == ("aggregator", 40, 2.0)
    assert report.totals.completion_tokens == 120
    assert report.totals.tok_per_s == 15.0
    assert report.totals.failed == 1


def test_json_round_trip() -> None:
    runs = [make("L1.1", 1, 3, 0.0, 1.0), make("AGG", 2, 4, 1.0, 2.0)]
    report = RunReport.build(profile="p", prompt="q", answer="x", runs=runs, wall_s=2.0,
                             cores=2, models={"m": {"backend": "llamacpp"}})
    assert RunReport.from_dict(report.to_dict()) == report


def _run(agent: str, layer: int, role: str, start: float, first: float | None,
         end: float, ok: bool = True) -> AgentRun:
    return AgentRun(agent=agent, model="m", layer=layer, role=role, ok=ok, start_s=start,
                    first_text_s=first, end_s=end)


def test_latency_after_an_early_exit_reads_the_last_layer_that_ran() -> None:
    """layers_up_to stopped after layer 1: the aggregator (layer 4) read layer 1."""
    runs = [_run("L1.1", 1, "proposer", 0.0, 0.5, 2.0), _run("L1.2", 1, "proposer", 0.0, 0.4, 3.0),
            _run("L1.3", 1, "proposer", 0.0, None, 1.0, ok=False),
            _run("AGG", 4, "aggregator", 3.1, 4.0, 5.0)]
    latency = latency_of(runs)
    assert latency["reference_order"] == ["L1.1", "L1.2"]
    assert latency["aggregator_first_text_after_references_s"] == 1.0
    assert latency["answer_first_text_s"] == 4.0


def test_latency_of_a_vote_is_when_its_layer_ended() -> None:
    runs = [_run("L1.1", 1, "proposer", 0.0, 0.5, 2.0), _run("L1.2", 1, "proposer", 0.0, 0.4, 3.0)]
    latency = latency_of(runs)
    assert latency["answer_first_text_s"] == 3.0
    assert latency["aggregator_first_text_after_references_s"] is None
