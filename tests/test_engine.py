"""Engine logic with the scripted backend: timeouts, abandonment, dead callbacks,
interrupts. Deterministic: tests wait on the backend's events, never on a clock."""

from __future__ import annotations

import gc
import signal
import threading
import time
from pathlib import Path

import pytest

from localmoa import engine, signals
from localmoa.agents import Control, run_agent
from localmoa.backends.base import GenerateOptions
from localmoa.chat import ChatSession
from localmoa.engine import RunEvents, execute_plan
from localmoa.errors import AggregatorFailedError, RunInterrupted
from localmoa.host import ModelHost
from localmoa.memory.planner import plan
from localmoa.metrics import AgentRun, RunReport
from localmoa.recipe import Overrides, build_graph

from .conftest import SAFETY_S
from .scripted import MiB, Script, ScriptedBackend, config, footprint

QUESTION = [{"role": "user", "content": "Which is larger, 9.11 or 9.9?"}]
WAIT_S = SAFETY_S  # only ever reached when the behaviour under test is broken


def run(cfg, *, budget_mib: int = 10_000, sizes: dict[str, int] | None = None,
        events: RunEvents | None = None, host: ModelHost | None = None, cores: int = 2):
    graph = build_graph(cfg, "p", Overrides(max_tokens=64))
    fps = {m: footprint(m, (sizes or {}).get(m, 100)) for m in graph.models}
    the_plan = plan(graph, fps, {"ram": budget_mib * MiB}, cores)
    return execute_plan(cfg, graph, QUESTION, the_plan, {}, events=events, host=host)


def test_scripted_run_answers(scripted: ScriptedBackend) -> None:
    cfg = config({"m": {}}, [[{"model": "m"}, {"model": "m"}]], {"model": "m"})
    report = run(cfg)
    assert report.ok and report.answer == "Nine point nine is larger."
    assert [r.ok for r in report.agents] == [True, True, True]
    aggregator_messages = scripted.calls[-1][1]
    assert "1. Nine point nine is larger." in aggregator_messages[0]["content"]


def test_the_report_says_when_the_answer_began(scripted: ScriptedBackend) -> None:
    """latency: the aggregator's first text from the start and after its last reference
    ended, and the references in the order the aggregator read them."""
    cfg = config({"m": {}, "n": {}}, [[{"model": "n"}, {"model": "m"}]], {"model": "m"})
    report = run(cfg)
    proposers, aggregator = report.agents[:2], report.agents[2]
    assert all(r.first_text_s is not None and r.start_s <= r.first_text_s <= r.end_s
               for r in report.agents)
    latency = report.latency
    assert latency["answer_first_text_s"] == aggregator.first_text_s
    assert latency["aggregator_first_text_after_references_s"] == pytest.approx(
        aggregator.first_text_s - max(r.end_s for r in proposers), abs=1e-3)
    assert latency["aggregator_first_text_after_references_s"] >= 0  # given whole, after
    assert latency["reference_order"] == [r.agent for r in proposers]
    assert latency["references_prefilled_early_tokens"] == 0


def test_a_timeout_cuts_an_agent_at_its_next_piece(scripted: ScriptedBackend,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine.state, "GRACE_S", 30.0)  # it stops at once: never abandoned
    scripted.scripts["chatty"] = Script(forever=True)
    cfg = config({"m": {}, "chatty": {}},
                 [[{"model": "m"}, {"model": "chatty", "timeout_s": 0.3}]], {"model": "m"})
    report = run(cfg)
    chatty = next(r for r in report.agents if r.model == "chatty")
    assert chatty.error == "timed out after 0.3 s (per-agent timeout)"
    assert chatty.answer  # what it wrote before is kept
    assert report.ok and report.actual["abandoned_agents"] == 0


def test_an_abandoned_instance_is_replaced_then_freed(scripted: ScriptedBackend) -> None:
    hold = threading.Event()
    scripted.scripts["stuck"] = Script(hold=hold)  # its first call never looks up
    cfg = config({"m": {}, "stuck": {}},
                 [[{"model": "m"}, {"model": "stuck", "timeout_s": 0.2}]], {"model": "stuck"})
    host = ModelHost(cfg)
    try:
        report = run(cfg, host=host)
        # the aggregator's instance (stuck#0) was the abandoned one: a fresh one served it
        assert report.ok, report.error
        stuck = report.agents[1]
        assert not stuck.ok and "did not stop; abandoned" in stuck.error
        assert report.agents[-1].ok
        assert scripted.loads.count("stuck") == 2
        assert report.actual["abandoned_agents"] == 1
        assert report.actual["held_bytes"] == {"ram": 100 * MiB}
        assert len(host.held) == 1 and host.held[0].inst.model == "stuck"
        assert scripted.unloads.count("stuck") == 1  # the fresh one, as the plan said
        hold.set()  # the stuck call returns at last: the held instance is freed
        assert host.released.wait(WAIT_S)
        assert host.held == [] and host.held_bytes() == {}
        assert scripted.unloads.count("stuck") == 2
    finally:
        hold.set()
        host.close()


def test_held_memory_is_never_planned_over(scripted: ScriptedBackend) -> None:
    hold = threading.Event()
    scripted.scripts["stuck"] = Script(hold=hold)
    cfg = config({"small": {}, "stuck": {}, "big": {}},
                 [[{"model": "small"}, {"model": "stuck", "timeout_s": 0.2}]], {"model": "big"})
    try:
        with pytest.raises(AggregatorFailedError) as exc:
            # 160 MiB: layer 1 (10 + 100) fits, then big (150) alone; with stuck still
            # held (100) it cannot load without exceeding the budget.
            run(cfg, budget_mib=160, sizes={"small": 10, "stuck": 100, "big": 150})
        report = exc.value.report
        assert report.agents[0].ok
        assert "would exceed the memory budget" in report.agents[-1].error
        assert "stuck#0" in report.agents[-1].error
        assert "big" not in scripted.loads
    finally:
        hold.set()


def test_a_chat_turn_after_an_abandoned_agent(scripted: ScriptedBackend,
                                              smollm2_path: Path) -> None:
    hold = threading.Event()
    scripted.scripts["stuck"] = Script(hold=hold)
    cfg = config({"m": {}, "stuck": {}},
                 [[{"model": "stuck", "timeout_s": 0.2}, {"model": "m"}]], {"model": "m"},
                 path=smollm2_path)  # real headers, for the footprints
    session = ChatSession(cfg, Overrides(max_tokens=32), memory_budget="4GiB")
    try:
        first = session.ask("Hello?")
        assert first.report.ok and not first.report.agents[0].ok
        assert len(session.host.held) == 1
        second = session.ask("Which is larger, 9.11 or 9.9?")  # stuck#0 is still held
        assert second.report.ok
        assert second.report.agents[0].ok, second.report.agents[0].error
        assert second.report.actual["loads"] == 1  # a fresh stuck instance, nothing else
        hold.set()
        assert session.host.released.wait(WAIT_S)
        assert session.host.held == []
    finally:
        hold.set()
        session.close()


def test_a_failing_callback_costs_no_agent_and_no_thread(scripted: ScriptedBackend) -> None:
    cfg = config({"m": {}}, [[{"model": "m"}, {"model": "m"}, {"model": "m"}]], {"model": "m"})

    def broken(agent, run) -> None:
        raise RuntimeError("display bug")

    result: dict = {}
    # room for one instance: the agents run in waves, one after another, on worker 0
    thread = threading.Thread(target=lambda: result.setdefault(
        "report", run(cfg, budget_mib=110, events=RunEvents(on_agent_done=broken))))
    thread.start()
    thread.join(WAIT_S)
    assert not thread.is_alive(), "the next wave hung on a dead worker thread"
    report = result["report"]
    assert report.ok and all(r.ok for r in report.agents)
    assert report.plan["waves"] == 4
    assert any("on_agent_done callback failed" in w and "display bug" in w
               for w in report.warnings)


def test_a_stopped_stream_frees_its_instance_without_the_gc(scripted: ScriptedBackend) -> None:
    cfg = config({"m": {}}, [[{"model": "m"}]], {"model": "m"})
    model = scripted.load("m", cfg.models["m"], None, 1)
    agent = build_graph(cfg, "p", Overrides(max_tokens=64)).layers[0][0]
    control = Control()
    seen: list[str] = []

    def stop_after_two(agent, piece) -> None:
        seen.append(piece)
        if len(seen) == 2:
            control.stop.set()

    gc.disable()  # the stream and its generator form a cycle only the GC would break
    try:
        run = AgentRun(agent=agent.id, model="m", layer=1, role="proposer", ok=False)
        run_agent(agent, model, cfg.models["m"], 1, QUESTION, None, control, run,
                  time.perf_counter(), None, stop_after_two)
        assert run.error == "interrupted" and run.answer == "Nine point"
        again = model.chat(QUESTION, GenerateOptions(max_tokens=64)).text()
        assert again == "Nine point nine is larger."
    finally:
        gc.enable()


def test_a_bug_is_reported_as_one_and_traced_with_debug(
        scripted: ScriptedBackend, monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str]) -> None:
    scripted.scripts["buggy"] = Script(bug_after=2)
    cfg = config({"m": {}, "buggy": {}}, [[{"model": "m"}, {"model": "buggy"}]], {"model": "m"})
    report = run(cfg)
    buggy = report.agents[1]
    assert buggy.error.startswith("internal error: TypeError: scripted bug")
    assert "LOCALMOA_DEBUG=1" in buggy.error and buggy.answer == "Nine point"
    assert "Traceback" not in capfd.readouterr().err
    monkeypatch.setenv("LOCALMOA_DEBUG", "1")
    run(cfg)
    err = capfd.readouterr().err
    assert "agent L1.2 (buggy) raised" in err and "Traceback" in err
    assert "TypeError: scripted bug" in err and "_generate" in err


def _signal_when(event_sets: list[threading.Event], sig: int) -> threading.Thread:
    """A thread that sends ``sig`` to this process once every event is set."""
    def send() -> None:
        for ev in event_sets:
            assert ev.wait(WAIT_S)
        thread.sent_at = time.monotonic()  # type: ignore[attr-defined]
        # to the main thread itself: a process-wide signal may land on another thread,
        # and the main thread sees it only when it next runs Python code
        signal.pthread_kill(threading.main_thread().ident or 0, sig)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def test_ctrl_c_gives_all_agents_one_grace_period_in_total(
        scripted: ScriptedBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine.state, "GRACE_S", 1.0)
    hold = threading.Event()
    names = [f"deaf{i}" for i in range(4)]
    for name in names:
        scripted.scripts[name] = Script(hold=hold, holds=99)
    cfg = config({n: {} for n in [*names, "m"]}, [[{"model": n} for n in names]], {"model": "m"})
    _signal_when([scripted.event(scripted.started, n) for n in names], signal.SIGINT)
    try:
        with pytest.raises(RunInterrupted) as exc:
            run(cfg, cores=4)
        assert exc.value.exit_code == 130
        errors = [a.error for a in exc.value.report.agents]
        assert errors == ["interrupted (did not stop within 1 s)"] * 4
        assert exc.value.report.actual["abandoned_agents"] == 4
    finally:
        hold.set()


def test_the_grace_period_is_shared_by_every_worker() -> None:
    now = [0.0]
    waits: list[float] = []

    class NeverIdle:
        def wait(self, timeout: float) -> bool:  # as if it waited the whole timeout
            waits.append(timeout)
            now[0] += timeout
            return False

    workers = [type("Worker", (), {"idle": NeverIdle()})() for _ in range(4)]
    engine.waves.wait_for_all(workers, 2.0, clock=lambda: now[0])
    assert waits == [2.0, 0.0, 0.0, 0.0]


def test_an_agent_starts_once_its_model_is_loaded_while_the_next_one_loads(
        scripted: ScriptedBackend) -> None:
    """A wave's loads go one after another; the agents of the first model loaded start
    then, instead of waiting for the wave's last load."""
    gates = {m: threading.Event() for m in ("a", "b")}
    for name, gate in gates.items():
        scripted.scripts[name] = Script(load_hold=gate)
    cfg = config({"a": {}, "b": {}}, [[{"model": "a"}, {"model": "b"}]], {"model": "a"})
    result: dict[str, object] = {}
    thread = threading.Thread(target=lambda: result.setdefault("report", run(cfg)))
    thread.start()
    try:
        loading = {m: scripted.event(scripted.loading, m) for m in gates}
        while not any(e.is_set() for e in loading.values()):
            loading["a"].wait(0.01)
        first = next(m for m, e in loading.items() if e.is_set())
        other = next(m for m in gates if m != first)
        gates[first].set()
        assert scripted.event(scripted.started, first).wait(WAIT_S)  # its agent runs
        assert other not in scripted.loads  # while the other model still loads
        assert loading[other].wait(WAIT_S)
    finally:
        for gate in gates.values():
            gate.set()
        thread.join(WAIT_S)
    report = result["report"]
    assert isinstance(report, RunReport) and report.ok, report
    starts = {a.model: a.start_s for a in report.agents if a.layer == 1}
    assert starts[first] < starts[other]


def test_ctrl_c_while_a_model_loads(scripted: ScriptedBackend) -> None:
    gate = threading.Event()
    scripted.scripts["m"] = Script(load_hold=gate)
    cfg = config({"m": {}}, [[{"model": "m"}]], {"model": "m"})
    _signal_when([scripted.event(scripted.loading, "m")], signal.SIGINT)
    try:
        with pytest.raises(RunInterrupted) as exc:
            run(cfg)
        assert exc.value.exit_code == 130
        assert exc.value.report.error == "interrupted"
        assert scripted.loads == []  # interrupted inside the load
        # its agents waited for it: they were interrupted, not failed by a missing model
        errors = [a.error for a in exc.value.report.agents]
        assert errors and set(errors) == {"interrupted"}, errors
    finally:
        gate.set()


def test_sigterm_during_generation_is_143_and_keeps_the_text(
        scripted: ScriptedBackend) -> None:
    scripted.scripts["chatty"] = Script(forever=True)
    cfg = config({"chatty": {}, "m": {}}, [[{"model": "chatty"}]], {"model": "m"})
    signals.install()  # the CLI's handlers (conftest restores the previous ones)
    _signal_when([scripted.event(scripted.wrote, "chatty")], signal.SIGTERM)
    with pytest.raises(RunInterrupted) as exc:
        run(cfg)
    assert exc.value.exit_code == 143
    report = exc.value.report
    assert report.error == "terminated (SIGTERM)"
    assert report.agents[0].answer  # what it had written is kept


def test_a_chat_turn_after_ctrl_c_left_a_deaf_agent(scripted: ScriptedBackend,
                                                    smollm2_path: Path) -> None:
    hold = threading.Event()
    scripted.scripts["deaf"] = Script(hold=hold)  # its first call ignores the stop
    cfg = config({"deaf": {}, "m": {}}, [[{"model": "deaf"}, {"model": "m"}]], {"model": "m"},
                 path=smollm2_path)
    session = ChatSession(cfg, Overrides(max_tokens=32), memory_budget="4GiB")
    try:
        _signal_when([scripted.event(scripted.started, "deaf")], signal.SIGINT)
        with pytest.raises(RunInterrupted) as exc:
            session.ask("Hello?")
        assert exc.value.report.agents[0].error == "interrupted (did not stop within 0.3 s)"
        assert len(session.host.held) == 1  # out of the plan: never handed out again
        turn = session.ask("Which is larger, 9.11 or 9.9?")
        assert turn.report.ok and all(a.ok for a in turn.report.agents)
        hold.set()
        assert session.host.released.wait(WAIT_S)
    finally:
        hold.set()
        session.close()


def test_ctrl_c_ends_a_benchmark(scripted: ScriptedBackend, smollm2_path: Path) -> None:
    """A failed run is one of bench's samples; an interrupted one ends the benchmark."""
    from localmoa.bench import run_bench

    scripted.scripts["chatty"] = Script(forever=True)
    cfg = config({"chatty": {}, "m": {}}, [[{"model": "chatty"}]], {"model": "m"},
                 path=smollm2_path)
    _signal_when([scripted.event(scripted.wrote, "chatty")], signal.SIGINT)
    with pytest.raises(RunInterrupted):
        run_bench(cfg, ["p"], ["one", "two"], repeat=3, warmup=0, memory_budget="4GiB",
                  baseline=False)
    assert [call[0] for call in scripted.calls] == ["chatty"]  # nothing ran after it
