"""A batch survives its worker's death, and signals sent to the whole process group
(real SmolLM2-135M, real worker processes).

The worker is killed from outside at a moment the run itself reports (an agent's
text callback, an engine event), never after a sleep; clocks only bound a broken test.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from localmoa import build_graph, load_config
from localmoa.engine import ModelHost, RunEvents, execute_plan
from localmoa.errors import LayerFailedError
from localmoa.memory.planner import Instance, Plan, Task, Wave
from localmoa.metrics import RunReport
from localmoa.recipe import Agent, Overrides

from .conftest import SAFETY_S, EventStream

#: A long, steady answer: every proposer is still decoding when its worker is killed.
COUNT = "Count from 1 to 200, one number per line."
QUESTION = [{"role": "user", "content": COUNT}]
MAX_TOKENS = 160
MODEL = "smollm2-135m"
KILLED = ("model smollm2-135m crashed again: signal 9 (SIGKILL) during decode (killed by "
          "the system, often for lack of memory, or by a user)")


class Killer:
    """Kills the batch's worker from the agents' text callbacks: first when L1.2 has
    written two pieces, then (``twice``) when the fresh worker has sent text."""

    def __init__(self, host: ModelHost, twice: bool = False) -> None:
        self.host = host
        self.twice = twice
        self.lock = threading.Lock()
        self.streamed: dict[str, list[str]] = {}
        self.before: dict[str, str] = {}  # each agent's text when the worker was killed
        self.killed: list[int] = []
        self.restarts: list[tuple[str, str]] = []

    def on_text(self, agent: Agent, piece: str) -> None:
        with self.lock:
            self.streamed.setdefault(agent.id, []).append(piece)
            model = self.host.loaded[Instance(MODEL, 0)].model
            if not self.killed and len(self.streamed.get("L1.2", [])) >= 2:
                self.before = {a: "".join(p) for a, p in self.streamed.items()}
                self.kill(model.pid)
            elif (self.twice and len(self.killed) == 1 and model.pid != self.killed[0]
                  and model.process.phase == "decode"):  # the fresh worker's text arrived
                self.kill(model.pid)

    def kill(self, pid: int) -> None:
        os.kill(pid, signal.SIGKILL)
        self.killed.append(pid)

    def on_worker_restarted(self, instance: str, reason: str) -> None:
        self.restarts.append((instance, reason))


@pytest.fixture
def counters(tmp_path: Path) -> Path:
    """tiny's shape (three SmolLM2 proposers, a SmolLM2 aggregator) with the persona
    whose answer to COUNT is long: every proposer is still writing at each kill."""
    teacher = ("{model: smollm2-135m, system: 'You are a teacher. Explain your reasoning "
               "step by step, briefly.'}")
    cfg = tmp_path / "counters.yaml"
    cfg.write_text(f"profiles:\n  counters:\n    layers: [[{teacher}, {teacher}, {teacher}]]\n"
                   "    aggregator: {model: smollm2-135m}\n", encoding="utf-8")
    return cfg


def run_batch(killer: Killer, cfg: Path, smollm2_path: Path) -> RunReport:
    """The three proposers as one batch on one instance, then the aggregator there."""
    config = load_config(cfg)
    graph = build_graph(config, "counters", Overrides(max_tokens=MAX_TOKENS, temperature=0.0))
    batch = Instance(MODEL, 0, seqs=3)
    plan = Plan(waves=[
        Wave(index=1, layer=1, tasks=[Task(a.id, MODEL, 0, 2, batch=3) for a in graph.layers[0]],
             loads=[batch], batches={MODEL: 3}),
        Wave(index=2, layer=2, tasks=[Task("AGG", MODEL, 0, 2)], unloads=[batch])],
        budgets={}, peak_bytes={}, cores=2)
    events = RunEvents(on_text=killer.on_text, on_worker_restarted=killer.on_worker_restarted)
    try:
        return execute_plan(config, graph, QUESTION, plan, {MODEL: smollm2_path},
                            events=events, host=killer.host)
    finally:
        killer.host.close()


def test_a_batchs_worker_killed_mid_decode_restarts_and_every_agent_goes_on(
        counters: Path, smollm2_path: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "events.jsonl"
    monkeypatch.setenv("LOCALMOA_EVENT_LOG", str(log))
    killer = Killer(ModelHost(load_config(counters)))
    report = run_batch(killer, counters, smollm2_path)
    assert report.ok and report.answer
    proposers = [run for run in report.agents if run.layer == 1]
    assert [run.ok for run in proposers] == [True] * 3, [run.error for run in proposers]
    for run in proposers:
        before = killer.before.get(run.agent, "")
        streamed = "".join(killer.streamed[run.agent])
        assert run.answer == streamed.strip()  # what the agent read is its answer
        assert streamed.startswith(before)  # nothing written before the death was lost
        if before.strip():  # it went on after that text, not from the start again
            assert not streamed[len(before):].lstrip().startswith(before.strip()), run.answer
        assert run.worker_restarts == 1 and run.batch == 3
        assert 0 < run.completion_tokens <= MAX_TOKENS  # the budget counts both workers
    assert killer.before["L1.2"]
    assert report.agents[-1].worker_restarts == 0  # the aggregator ran after it
    assert report.actual["worker_restarts"] == 1
    [crash] = report.actual["crashed_workers"]
    assert crash.startswith("model smollm2-135m crashed: signal 9 (SIGKILL) during decode")
    assert report.actual["loads"] == 1  # the plan's instance: same key, same footprint
    [(instance, reason)] = killer.restarts
    assert instance == "smollm2-135m#0x3" and reason == crash
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    [restarted] = [e for e in logged if e["event"] == "worker_restarted"]
    assert restarted["sequences"] == 3 and restarted["pid"] != killer.killed[0]
    assert restarted["instance"] == instance


def test_a_second_death_fails_the_batch_with_one_line(counters: Path,
                                                      smollm2_path: Path) -> None:
    killer = Killer(ModelHost(load_config(counters)), twice=True)
    with pytest.raises(LayerFailedError) as exc:
        run_batch(killer, counters, smollm2_path)
    report = exc.value.report
    assert len(killer.killed) == 2 and len(killer.restarts) == 1
    proposers = [run for run in report.agents if run.layer == 1]
    assert [run.error for run in proposers] == [KILLED] * 3
    assert all(run.answer for run in proposers), "what they wrote is kept"
    assert all(run.worker_restarts == 1 for run in proposers)
    assert report.actual["worker_restarts"] == 1
    assert report.actual["crashed_workers"][-1] == KILLED
    assert str(exc.value).startswith("every agent of layer 1 failed")


# --- signals to the whole process group -------------------------------------------------

def start_group(events: EventStream, *args: str) -> subprocess.Popen[bytes]:
    """`localmoa run COUNT` as the leader of a process group of its own (with its
    workers), as a shell job or a service is: a signal to the group reaches them all."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "localmoa", "run", COUNT, "-t", "0", "-n", "3000", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        env=dict(os.environ, **events.env, COLUMNS="200"), pass_fds=(events.write_fd,))
    events.spawned()
    return proc


def writing(events: EventStream) -> None:
    """Until every proposer of the batch has written text."""
    for agent in ("L1.1", "L1.2", "L1.3"):
        events.wait_for("first_text", agent=agent)


def test_sigterm_to_the_process_group_interrupts_and_keeps_the_partial_work() -> None:
    events = EventStream()
    proc = start_group(events, "--json")
    writing(events)
    os.killpg(proc.pid, signal.SIGTERM)  # localmoa and its workers alike
    out, err = proc.communicate(timeout=SAFETY_S)
    assert proc.returncode == 143, err.decode()[-800:]
    doc = json.loads(out)
    assert doc["error"] == "terminated (SIGTERM)"
    proposers = [a for a in doc["agents"] if a["layer"] == 1]
    assert proposers and all(a["answer"] for a in proposers)  # the partial work is kept
    for agent in proposers:
        assert agent["ok"] or agent["error"].startswith("interrupted"), agent["error"]
    assert doc["actual"]["crashed_workers"] == []
    assert doc["actual"]["worker_restarts"] == 0


def test_the_stats_after_ctrl_c_count_the_tokens_the_agents_wrote() -> None:
    events = EventStream()
    proc = start_group(events)
    writing(events)
    os.killpg(proc.pid, signal.SIGINT)  # a Ctrl-C in the terminal reaches the whole group
    _, err = proc.communicate(timeout=SAFETY_S)
    text = err.decode()
    assert proc.returncode == 130, text[-800:]
    rows = {m[1]: int(m[2]) for m in re.finditer(
        r"^\W*(L1\.\d)\W+smollm2-135m\W+\d+\W+[\d.]+\W+\d+\W+(\d+)\W", text, re.M)}
    assert set(rows) == {"L1.1", "L1.2", "L1.3"}, text[-2000:]
    assert all(tokens > 0 for tokens in rows.values()), rows  # the "out tok" column
    total = re.search(r"total .* (\d+) tokens generated by", text)
    assert total and int(total[1]) == sum(rows.values()), text[-800:]
