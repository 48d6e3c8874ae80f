"""Context overflow, interrupts, the offline promise and concurrency, on real runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from localmoa import backends, build_graph, load_config
from localmoa.backends.llamacpp.backend import LlamaCppBackend
from localmoa.engine import execute_plan
from localmoa.memory.planner import Instance, Plan, Task, Wave
from localmoa.preflight import preflight
from localmoa.prompts import TRIM_MARK, fit_references
from localmoa.recipe import Overrides
from localmoa.runtime import run_moa

from .conftest import SAFETY_S, EventStream, start_cli

QUESTION = "Write a short story about a dragon who learns to count."


# --- context overflow ----------------------------------------------------------------

def test_fit_references_is_fair_and_drops_nothing() -> None:
    refs = ["a " * 100, "b " * 300, "c " * 10]
    count = lambda text: len(text.split())  # noqa: E731
    cut = lambda text, n: " ".join(text.split()[:n])  # noqa: E731
    kept, before, after = fit_references(refs, 205, count, cut)
    assert before == 410 and after <= 205 + 8
    assert [count(k.removesuffix(TRIM_MARK)) for k in kept] == [50, 150, 8]  # same share, min 8
    assert all(k.endswith(TRIM_MARK) for k in kept[:2])


def test_references_trimmed_to_fit_a_tiny_context(tmp_path: Path, smollm2_path: Path) -> None:
    cfg = tmp_path / "tiny-ctx.yaml"
    cfg.write_text(f"""\
models:
  small-ctx:
    backend: llamacpp
    source: {{path: {smollm2_path}}}
    n_ctx: 512
profiles:
  cramped:
    layers: [[{{model: small-ctx, max_tokens: 220}}, {{model: small-ctx, max_tokens: 220}},
              {{model: small-ctx, max_tokens: 220}}]]
    aggregator: {{model: small-ctx, max_tokens: 64}}
""", encoding="utf-8")
    seen: list[list[dict]] = []

    class Recording(LlamaCppBackend):
        def load(self, name, spec, path, n_threads, **kw):
            model = super().load(name, spec, path, n_threads, **kw)
            chat = model.chat

            def recorded(messages, options):
                seen.append([dict(m) for m in messages])
                return chat(messages, options)
            model.chat = recorded  # type: ignore[method-assign]
            return model

    backends.register("llamacpp", Recording)
    try:
        config = load_config(cfg)
        graph = build_graph(config, "cramped", Overrides(temperature=0.9, seed=3))
        report = run_moa(config, graph, [{"role": "user", "content": QUESTION}])
    finally:
        backends.register("llamacpp", LlamaCppBackend)
    assert report.ok, report.error
    agg = report.agents[-1]
    proposer_tokens = sum(a.completion_tokens for a in report.agents[:3])
    assert proposer_tokens > 512 - 64  # the references really did not fit
    trimmed = agg.references_trimmed
    assert trimmed is not None and trimmed["references"] == 3
    assert trimmed["tokens_after"] < trimmed["tokens_before"]
    assert agg.prompt_tokens + agg.completion_tokens <= 512
    system = seen[-1][0]["content"]
    for n in (1, 2, 3):  # every reference is still there, shortened
        assert f"\n{n}. " in system
    assert system.count(TRIM_MARK) >= 1


# --- interrupts -----------------------------------------------------------------------

def start_run(events: EventStream, *extra: str) -> subprocess.Popen[bytes]:
    return start_cli("run", QUESTION, "--max-tokens", "3000", "--layers", "2", *extra,
                     events=events)


@pytest.mark.parametrize(("sig", "code", "line", "phase"), [
    (signal.SIGINT, 130, "localmoa: error: interrupted", ("loading", {})),
    (signal.SIGINT, 130, "localmoa: error: interrupted", ("first_text", {"agent": "L1.1"})),
    (signal.SIGTERM, 143, "localmoa: error: terminated (SIGTERM)", ("loading", {})),
    (signal.SIGTERM, 143, "localmoa: error: terminated (SIGTERM)",
     ("first_text", {"agent": "L1.1"})),
])
def test_signals_stop_a_real_run(sig: int, code: int, line: str,
                                 phase: tuple[str, dict]) -> None:
    events = EventStream()
    proc = start_run(events)
    events.wait_for(phase[0], **phase[1])  # a model loading / layer 1 writing
    workers = psutil.Process(proc.pid).children(recursive=True)  # its model workers
    sent = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err.decode()[-500:]
    assert time.monotonic() - sent < 15
    gone, alive = psutil.wait_procs(workers, timeout=10)  # the signal reached them all
    assert not alive, f"workers left running: {alive}"
    assert err.decode().strip().splitlines()[-1] == line
    logged = events.all()
    assert logged[-1]["event"] == "run_end" and logged[-1]["error"] == line.split(": ")[-1]
    assert "layer_done" not in [e["event"] for e in logged]  # stopped within layer 1


def test_interrupt_prints_what_was_produced() -> None:
    events = EventStream()
    proc = start_run(events, "--json")
    for agent in ("L1.1", "L1.2", "L1.3"):  # layer 1 is writing its long answers
        events.wait_for("first_text", agent=agent)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130
    doc = json.loads(out)
    assert doc["ok"] is False and doc["error"] == "interrupted"
    assert all(a["answer"] for a in doc["agents"]), "every partial answer is kept"
    assert all(a["error"].startswith("interrupted") for a in doc["agents"] if not a["ok"])


# --- offline --------------------------------------------------------------------------

GUARDED = """
import socket, sys
from localmoa import netguard
netguard.install()
socket.create_connection(("127.0.0.1", {port}), timeout=2).close()  # loopback: allowed
for target in ({remote!r},):
    try:
        socket.create_connection(target, timeout=2)
    except Exception as exc:
        print(type(exc).__name__, exc)
try:
    socket.getaddrinfo("example.com", 443)
except Exception as exc:
    print(type(exc).__name__, exc)
"""


def test_socket_guard_refuses_everything_but_loopback(httpserver) -> None:
    code = GUARDED.format(port=httpserver.port, remote=("10.20.30.40", 443))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60).stdout.splitlines()
    assert out[0].startswith("NetworkRefused refused to contact 10.20.30.40: localmoa runs "
                             "offline")
    assert out[1].startswith("NetworkRefused refused to contact example.com")


def test_a_normal_run_opens_no_non_loopback_socket(tmp_path: Path) -> None:
    log = tmp_path / "network.log"
    env = dict(os.environ, LOCALMOA_NETWORK_LOG=str(log))
    env.pop("HF_HUB_OFFLINE", None)  # localmoa sets it itself
    proc = subprocess.run([sys.executable, "-m", "localmoa", "run", "Hi", "--max-tokens", "8"],
                          capture_output=True, env=env, timeout=SAFETY_S)
    assert proc.returncode == 0, proc.stderr.decode()[-500:]
    attempts = log.read_text().splitlines() if log.exists() else []
    assert not [a for a in attempts if not a.startswith("allow")], attempts


def test_cli_sets_huggingface_offline(monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from localmoa.cli import main

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(SystemExit):
        main(["profiles"])
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    capsys.readouterr()


# --- concurrency ----------------------------------------------------------------------

@pytest.mark.parametrize("batching", [True, False])
def test_four_agents_on_one_model_concurrently_answer_intact(tmp_path: Path,
                                                             smollm2_path: Path,
                                                             batching: bool) -> None:
    cfg = tmp_path / "four.yaml"
    prompts = ["Be brief.", "Answer in French.", "Use a list.", "Answer like a pirate."]
    agents = ", ".join(f"{{model: smollm2-135m, system: \"{p}\"}}" for p in prompts)
    cfg.write_text(f"profiles:\n  four:\n    layers: [[{agents}]]\n"
                   "    aggregator: {model: smollm2-135m}\n", encoding="utf-8")
    config = load_config(cfg) if batching else load_config(cfg).without_batching()
    graph = build_graph(config, "four", Overrides(max_tokens=40, temperature=0.0, seed=2))
    pre = preflight(config, graph, "8GiB")
    together = pre.plan.waves[0]
    proposers = [t for t in together.tasks if not t.follows]  # (the aggregator reads along)
    slots = {0} if batching else {0, 1, 2, 3}  # one batch of four, or four instances
    assert len(proposers) == 4 and {t.slot for t in proposers} == slots
    concurrent = execute_plan(config, graph, [{"role": "user", "content": QUESTION}], pre.plan,
                              pre.paths)
    layer1 = [a for a in concurrent.agents if a.layer == 1]
    assert {a.wave for a in layer1} == {1}  # at once (each as soon as its instance is loaded)

    # the same agents one at a time on a single instance, with the same 1 thread each
    one = [Wave(index=i + 1, layer=1, tasks=[Task(t.agent, t.model, 0, 1)],
                loads=[Instance(t.model, 0)] if i == 0 else []) for i, t in
           enumerate(proposers)]
    one.append(Wave(index=5, layer=2, tasks=[Task("AGG", "smollm2-135m", 0, 1)],
                    unloads=[Instance("smollm2-135m", 0)]))
    sequential = execute_plan(config, graph, [{"role": "user", "content": QUESTION}],
                              Plan(waves=one, budgets=pre.plan.budgets, peak_bytes={},
                                   cores=1), pre.paths)
    assert pre.plan.waves[-1].tasks[-1].agent == "AGG"
    for a, b in zip(layer1, [a for a in sequential.agents if a.layer == 1], strict=True):
        if batching:  # llama.cpp's N-row kernels may part from 1 row at a near tie
            assert a.ok and a.answer and a.batch == 5  # the aggregator reads along
        else:
            assert a.ok and a.answer == b.answer, (a.agent, a.answer, b.answer)
            assert a.completion_tokens == b.completion_tokens
