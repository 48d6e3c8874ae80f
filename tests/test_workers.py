"""Model workers: each loaded llama.cpp model in a process of its own (real SmolLM2-135M).

A worker is killed from outside, by pid, at the moment the engine's own events say
(its agent's first text: mid-decode), never after a sleep.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path

import psutil
import pytest

from localmoa import build_graph, load_config
from localmoa.backends.base import GenerateOptions
from localmoa.backends.llamacpp import worker
from localmoa.backends.llamacpp.backend import LlamaCppBackend
from localmoa.backends.llamacpp.spec import LlamaCppSpec, Source
from localmoa.cancel import Cancel
from localmoa.config import ModelSpec
from localmoa.engine import RunEvents, execute_plan
from localmoa.errors import GenerationError
from localmoa.memory.planner import Instance, Plan, Task, Wave
from localmoa.memory.probe import process_memory
from localmoa.recipe import Overrides
from localmoa.runtime import run_moa

from .conftest import SAFETY_S, EventStream, cli, start_cli

#: A long, steady answer: an agent is still decoding when its worker is killed.
COUNT = "Count from 1 to 200, one number per line."
MiB = 1024 * 1024


def loaded_pid(events: EventStream, instance: str) -> int:
    """The pid of the worker that most recently loaded ``instance``."""
    return [e["pid"] for e in events.seen if e["event"] == "loaded"
            and e["instance"] == instance][-1]


def kill_at_first_text(events: EventStream, agent: str, sig: int) -> str:
    """When ``agent`` has written its first text, send ``sig`` to its worker; its instance."""
    instance = events.wait_for("prefill", agent=agent)["instance"]
    events.wait_for("first_text", agent=agent)
    os.kill(loaded_pid(events, instance), sig)
    return instance


def test_a_proposers_worker_killed_by_sigsegv_mid_decode_costs_only_that_agent() -> None:
    events = EventStream()
    proc = start_cli("run", COUNT, "--no-batch", "-t", "0", "-n", "160", "--json",
                     events=events)
    # the agent on instance #0: the aggregator's instance too, so it must come back
    victim = events.wait_for("prefill", instance="smollm2-135m#0")["agent"]  # (no batch)
    instance = kill_at_first_text(events, victim, signal.SIGSEGV)
    out, err = proc.communicate(timeout=SAFETY_S)
    assert proc.returncode == 0, err.decode()[-800:]
    report = json.loads(out)
    runs = {run["agent"]: run for run in report["agents"]}
    assert runs[victim]["ok"] is False
    assert runs[victim]["error"] == ("model smollm2-135m crashed: signal 11 (SIGSEGV) "
                                     "during decode")
    assert runs[victim]["answer"], "what it wrote before the crash is kept"
    others = [a for a in ("L1.1", "L1.2", "L1.3") if a != victim]
    assert all(runs[a]["ok"] for a in others)
    assert runs["AGG"]["ok"] and report["answer"]
    assert report["actual"]["crashed_workers"] == [runs[victim]["error"]]
    # a later wave that needs the model started a fresh worker for it
    pids = [e["pid"] for e in events.all() if e["event"] == "loaded"
            and e["instance"] == instance]
    assert len(pids) == 2 and pids[0] != pids[1]


def test_a_batchs_worker_killed_mid_decode_is_restarted_and_its_agents_answer() -> None:
    events = EventStream()
    proc = start_cli("run", COUNT, "-t", "0", "-n", "160", "--json", events=events)
    instance = kill_at_first_text(events, "L1.2", signal.SIGSEGV)  # the three, one worker
    restarted = events.wait_for("worker_restarted")
    out, err = proc.communicate(timeout=SAFETY_S)
    assert proc.returncode == 0, err.decode()[-800:]
    report = json.loads(out)
    assert report["ok"] and report["answer"]
    assert all(run["ok"] for run in report["agents"]), [r["error"] for r in report["agents"]]
    # the aggregator reads along in that batch (reference streaming): it resumes too
    assert [run["worker_restarts"] for run in report["agents"]] == [1, 1, 1, 1]
    line = "model smollm2-135m crashed: signal 11 (SIGSEGV) during decode"
    assert report["actual"]["crashed_workers"] == [line]
    assert report["actual"]["worker_restarts"] == 1
    assert restarted["instance"] == instance and restarted["reason"] == line
    assert restarted["pid"] != loaded_pid(events, instance) and restarted["sequences"] == 4


def test_the_aggregators_worker_killed_mid_decode_prints_the_proposers_answers() -> None:
    events = EventStream()
    # a worker of its own (streaming, it would share the proposers' batch, restarted once)
    proc = start_cli("run", COUNT, "-t", "0", "-n", "160", "--no-stats",
                     "--no-stream-references", events=events)
    kill_at_first_text(events, "AGG", signal.SIGKILL)
    out, err = proc.communicate(timeout=SAFETY_S)
    assert proc.returncode == 1
    text = err.decode()
    assert text.strip().splitlines()[-1] == (
        "localmoa: error: the aggregator (smollm2-135m) failed: model smollm2-135m crashed: "
        "signal 9 (SIGKILL) during decode (killed by the system, often for lack of memory, "
        "or by a user)")
    for agent in ("L1.1", "L1.2", "L1.3"):  # nothing the user waited for is lost
        assert f"{agent} (smollm2-135m)" in text
    assert out.decode().strip(), "the aggregator's partial answer stays on stdout"


def test_no_worker_outlives_a_localmoa_killed_with_sigkill() -> None:
    events = EventStream()
    proc = start_cli("run", COUNT, "--no-batch", "-n", "160", events=events)
    events.wait_for("first_text", agent="L1.1")
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert len(workers) >= 3  # one per instance, and any spare started for the next wave
    proc.kill()
    proc.wait()
    _, alive = psutil.wait_procs(workers, timeout=10)  # they read end of file on their socket
    assert not alive, f"workers left running: {alive}"


@pytest.fixture
def spec(smollm2_path: Path) -> ModelSpec:
    return LlamaCppSpec(backend="llamacpp", source=Source(path=str(smollm2_path)), n_ctx=512)


def tree_pss() -> int:
    """PSS of this process and all its children."""
    me = psutil.Process()
    return process_memory()[1] + sum(process_memory(c.pid)[1] for c in me.children(True))


def test_unloading_ends_the_worker_and_its_memory_returns(spec: ModelSpec,
                                                          smollm2_path: Path) -> None:
    worker.discard_spares()
    before = tree_pss()
    model = LlamaCppBackend().load("smollm2", spec, smollm2_path, n_threads=1)
    assert model.chat([{"role": "user", "content": "Hi"}],
                      GenerateOptions(temperature=0, max_tokens=8)).text()
    loaded = tree_pss() - before
    assert loaded > 60 * MiB  # the weights it read, its context, its interpreter
    pid = model.pid
    model.unload()
    assert not Path(f"/proc/{pid}").exists()
    assert tree_pss() - before < 8 * MiB  # all of it came back


def test_a_worker_deaf_to_a_cancel_is_killed_after_the_grace(
        spec: ModelSpec, smollm2_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker, "CANCEL_GRACE_S", 0.5)
    model = LlamaCppBackend().load("smollm2", spec, smollm2_path, n_threads=1)
    stream = model.chat([{"role": "user", "content": COUNT}],
                        GenerateOptions(temperature=0, max_tokens=200))
    pieces = iter(stream)
    next(pieces)
    os.kill(model.pid, signal.SIGSTOP)  # stuck: it cannot answer the cancel
    stream.close()  # the cancel; no answer within the grace: killed, close returns
    assert model.process.dead.wait(10)
    assert not model.alive
    with pytest.raises(GenerationError, match="was unloaded|worker was killed"):
        model.chat([{"role": "user", "content": "Hi"}], GenerateOptions(max_tokens=4)).text()
    model.unload()  # harmless


def test_a_worker_that_dies_under_its_agent_sets_that_agents_cancel(
        spec: ModelSpec, smollm2_path: Path) -> None:
    """A dead worker reaches its agent as Ctrl-C and a timeout do: through the Cancel the
    agent's claim on the instance carries (occupancy.py), with the crash line."""
    model = LlamaCppBackend().load("smollm2", spec, smollm2_path, n_threads=1)
    cancel = Cancel()
    assert model.occupancy.claim(cancel)
    stream = model.chat([{"role": "user", "content": COUNT}],
                        GenerateOptions(temperature=0, max_tokens=200))
    pieces = iter(stream)
    next(pieces)
    os.kill(model.pid, signal.SIGKILL)
    assert cancel.wait(SAFETY_S)
    assert cancel.reason == "model smollm2 crashed: signal 9 (SIGKILL) during decode " \
        "(killed by the system, often for lack of memory, or by a user)"
    with pytest.raises(GenerationError, match="crashed"):
        list(pieces)
    model.occupancy.release()
    other = Cancel()  # an instance that localmoa unloads stops nobody
    model2 = LlamaCppBackend().load("smollm2", spec, smollm2_path, n_threads=1)
    assert model2.occupancy.claim(other)
    model2.unload()
    assert model2.process.dead.wait(SAFETY_S) and not other.is_set()


def test_a_closed_stream_stops_the_worker_at_its_next_token(spec: ModelSpec,
                                                            smollm2_path: Path) -> None:
    model = LlamaCppBackend().load("smollm2", spec, smollm2_path, n_threads=1)
    try:
        stream = model.chat([{"role": "user", "content": COUNT}],
                            GenerateOptions(temperature=0, max_tokens=200))
        pieces = iter(stream)
        next(pieces)
        stream.close()
        # the worker is free again at once: a second chat runs to its end
        again = model.chat([{"role": "user", "content": "Hi"}],
                           GenerateOptions(temperature=0, max_tokens=6))
        assert again.text() and again.stats is not None
        assert again.stats.completion_tokens <= 6
    finally:
        model.unload()


def test_in_process_models_still_run_with_workers_off() -> None:
    proc = cli("run", "Hi", "-n", "8", "--json", env={"LOCALMOA_WORKERS": "off"})
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["actual"]["workers"] == []
    assert "worker_pid" not in report["models"]["smollm2-135m"]


def test_a_bad_workers_setting_is_one_line() -> None:
    proc = cli("run", "Hi", env={"LOCALMOA_WORKERS": "maybe"})
    assert proc.returncode == 2
    assert proc.stderr.strip() == "localmoa: error: LOCALMOA_WORKERS='maybe': give on or off"


def test_workers_is_a_llamacpp_key(tmp_path: Path) -> None:
    config = tmp_path / "models.yaml"
    config.write_text("models:\n  remote:\n    backend: ollama\n    source: {ollama: 'x:1b'}\n"
                      "    workers: on\n")
    proc = cli("plan", "--config", str(config))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"localmoa: error: {config}:5: models.remote.workers: workers applies to backend: "
        "llamacpp only; an Ollama daemon runs its own runner processes")


def test_the_report_counts_every_workers_memory() -> None:
    proc = cli("run", "Hi", "-n", "8", "--no-batch", "--json")
    assert proc.returncode == 0, proc.stderr
    actual = json.loads(proc.stdout)["actual"]
    workers = actual["workers"]
    assert len(workers) == 3  # the three proposers' instances
    assert len({w["pid"] for w in workers}) == 3
    for entry in workers:
        assert entry["peak_rss_bytes"] >= entry["peak_pss_bytes"] > 30 * MiB
    # the tree's growth includes the workers: at least the largest of them
    assert actual["peak_pss_growth_bytes"] >= max(w["peak_pss_bytes"] for w in workers)


def test_the_next_waves_worker_starts_while_this_wave_runs(
        smollm2_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Agents one after another, each on a fresh instance: each next worker process is
    started during the wave before, so its load does not wait for Python to start."""
    log = tmp_path / "events.jsonl"
    monkeypatch.setenv("LOCALMOA_EVENT_LOG", str(log))
    config = load_config()
    graph = build_graph(config, "tiny", Overrides(max_tokens=4, temperature=0.0))
    agents = [*graph.layers[0], graph.aggregator]
    model = graph.aggregator.model
    waves = [Wave(index=i + 1, layer=a.layer, tasks=[Task(a.id, a.model, i, 2)],
                  loads=[Instance(model, i)], unloads=[Instance(model, i)])
             for i, a in enumerate(agents)]
    plan = Plan(waves=waves, budgets={}, peak_bytes={}, cores=2)
    report = execute_plan(config, graph, [{"role": "user", "content": "Hi"}], plan,
                          {model: smollm2_path})
    assert report.ok
    loaded = [json.loads(line) for line in log.read_text().splitlines()
              if json.loads(line)["event"] == "loaded"]
    assert [e["prestarted"] for e in loaded] == [False, True, True, True]
    assert len({e["pid"] for e in loaded}) == 4
    assert report.models[model]["worker_start_s"] > 0


def test_a_worker_is_started_with_exec_not_a_bare_fork() -> None:
    process = worker.WorkerProcess()
    try:
        assert process.ready.wait(60)
        assert psutil.Process(process.pid).cmdline()[1:3] == [
            "-m", "localmoa.backends.llamacpp.worker_main"]
    finally:
        process.stop()
    assert not process.alive


def test_a_batch_worker_that_died_between_layers_comes_back_with_room_for_the_batch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "events.jsonl"
    monkeypatch.setenv("LOCALMOA_EVENT_LOG", str(log))

    def kill_layer_ones_worker(layer: int, runs: list) -> None:
        if layer == 1:  # idle now, between the layers: killed from outside
            pid = [json.loads(line) for line in log.read_text().splitlines()
                   if json.loads(line)["event"] == "loaded"][-1]["pid"]
            os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):  # (reaped already by its reader)
                # until it has died, leaving its exit status to localmoa (not reaping it)
                os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)

    config = load_config()
    graph = build_graph(config, "tiny", Overrides(layers=2, max_tokens=8, temperature=0.0))
    report = run_moa(config, graph, [{"role": "user", "content": "Hi"}],
                     events=RunEvents(on_layer_done=kill_layer_ones_worker))
    assert report.ok and all(run.ok for run in report.agents)
    assert [run.batch for run in report.agents if run.layer == 2] == [3, 3, 3]
    loaded = [json.loads(line) for line in log.read_text().splitlines()
              if json.loads(line)["event"] == "loaded"]
    assert [e["instance"] for e in loaded] == ["smollm2-135m#0x3"] * 2
    crashes = report.actual["crashed_workers"]
    assert len(crashes) == 1 and crashes[0].startswith(
        "model smollm2-135m crashed: signal 9 (SIGKILL) while idle"), crashes


def test_a_batch_worker_deaf_to_a_members_cancel_is_killed_after_the_grace(
        smollm2_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from localmoa.backends.batch import Batch

    monkeypatch.setattr(worker, "CANCEL_GRACE_S", 0.5)
    spec = LlamaCppSpec(backend="llamacpp", source=Source(path=str(smollm2_path)), n_ctx=512)
    model = LlamaCppBackend().load("smollm2", spec, smollm2_path, n_threads=1, n_seq=2)
    batch = Batch(2, "smollm2#0")
    outcome: list[object] = []

    def quitter() -> None:
        with batch.chat([{"role": "user", "content": COUNT}],
                        GenerateOptions(temperature=0, max_tokens=200)) as stream:
            next(iter(stream))
            os.kill(model.pid, signal.SIGSTOP)  # stuck: it cannot answer the cancel
        # leaving the with-block closed the stream: the driver sends the cancel

    def stayer() -> None:
        try:
            batch.chat([{"role": "user", "content": COUNT}],
                       GenerateOptions(temperature=0, max_tokens=200)).text()
        except GenerationError as exc:
            outcome.append(str(exc))

    threads = [threading.Thread(target=f) for f in (quitter, stayer)]
    for thread in threads:
        thread.start()
    with pytest.raises(GenerationError, match="did not stop within 0.5 s of a cancel"):
        model.run_batch(batch, 1)
    batch.close("the worker was killed")
    for thread in threads:
        thread.join(30)
    assert not model.alive and outcome  # killed, and the other member was told
    model.unload()


def test_with_workers_off_no_worker_process_is_started(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALMOA_WORKERS", "off")
    worker.discard_spares()
    config = load_config().without_batching()  # three loads in one wave
    graph = build_graph(config, "tiny", Overrides(max_tokens=4, temperature=0.0))
    report = run_moa(config, graph, [{"role": "user", "content": "Hi"}])
    assert report.ok and report.actual["loads"] == 3
    assert worker.live_workers() == []
    assert not psutil.Process().children(recursive=True)


def test_a_killed_worker_is_dead_while_its_reader_still_waits_on_it() -> None:
    """``Popen.poll()`` says "running" while another thread holds the lock that guards
    waitpid: the reader thread does, in ``Popen.wait()``, just as the worker dies. The
    engine asked ``poll()`` between layers and handed the dead worker its next agents."""
    process = worker.WorkerProcess()
    try:
        assert process.ready.wait(60)
        with process.proc._waitpid_lock:  # as the reader holds it inside wait()
            os.kill(process.pid, signal.SIGKILL)
            os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)  # dead, not reaped
            assert process.proc.poll() is None  # what poll() says meanwhile
            assert not process.alive
    finally:
        process.stop()
