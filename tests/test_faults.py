"""Faults during a real run: failure injection through a wrapping test backend.

The wrapper is the real llama.cpp backend on SmolLM2-135M; models whose names
ask for it raise, hang, crawl or fail to load. Everything else is real.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from localmoa import backends, engine
from localmoa.backends.base import ChatStream
from localmoa.backends.llamacpp.backend import LlamaCppBackend
from localmoa.cli import main
from localmoa.config import Config, load_config, read_config_file
from localmoa.errors import AggregatorFailedError, GenerationError, ModelLoadError
from localmoa.recipe import Overrides, build_graph
from localmoa.runtime import run_moa

QUESTION = [{"role": "user", "content": "Which is larger, 9.11 or 9.9?"}]
HANG = threading.Event()  # never set: a hung backend waits on it


class FaultyBackend(LlamaCppBackend):
    """llama.cpp, except for models named raises / hangs / crawls / noload. "crawls" never
    stops talking: it starts its real answer over and over, until its timeout cuts it."""

    def load(self, name, spec, path, n_threads, **kw):
        if name == "noload":
            raise ModelLoadError(f"model {name!r}: injected load failure")
        model = super().load(name, spec, path, n_threads, **kw)
        if name in ("raises", "hangs", "crawls"):
            model.chat = self._faulty_chat(name, model.chat)  # type: ignore[method-assign]
        return model

    @staticmethod
    def _faulty_chat(kind, real_chat):
        def chat(messages, options):
            def pieces(stream: ChatStream) -> Iterator[str]:
                if kind == "hangs":
                    HANG.wait(600)  # a backend stuck in a call that never returns
                    yield "never"
                if kind == "crawls":  # a first piece at once: on a busy machine its model's
                    yield "Crawling: "  # own first token may come after its timeout
                while True:
                    with real_chat(messages, options) as inner:  # closed with this stream
                        for i, piece in enumerate(inner):
                            if kind == "raises" and i == 3:
                                raise GenerationError("injected failure after 3 pieces")
                            yield piece
                    if kind != "crawls":
                        break
            return ChatStream(pieces)
        return chat


@pytest.fixture
def faulty(tmp_path: Path, smollm2_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    backends.register("llamacpp", FaultyBackend)
    monkeypatch.setattr(engine.state, "GRACE_S", 1.0)
    cfg = tmp_path / "faults.yaml"
    models = "".join(f"  {n}:\n    backend: llamacpp\n    source: {{path: {smollm2_path}}}\n"
                     "    n_ctx: 1024\n" for n in ("raises", "hangs", "crawls", "noload"))
    cfg.write_text(f"""\
models:
{models}
profiles:
  faults:
    layers:
      - - {{model: smollm2-135m}}
        - {{model: raises}}
        - {{model: hangs, timeout_s: 2}}
        - {{model: crawls, timeout_s: 2}}
        - {{model: noload}}
    aggregator: {{model: smollm2-135m}}
  bad-aggregator:
    layers: [[{{model: smollm2-135m}}, {{model: smollm2-135m}}]]
    aggregator: {{model: raises}}
""", encoding="utf-8")
    read_config_file(cfg)
    yield cfg
    backends.register("llamacpp", LlamaCppBackend)


def test_failing_agents_are_dropped_and_reported(faulty: Path) -> None:
    config: Config = load_config(faulty)
    graph = build_graph(config, "faults", Overrides(max_tokens=48, temperature=0.0, seed=1))
    started = time.monotonic()
    report = run_moa(config, graph, QUESTION)
    took = time.monotonic() - started
    runs = {r.model: r for r in report.agents}
    assert runs["smollm2-135m"].ok and report.ok and report.answer.strip()
    assert not runs["raises"].ok and "injected failure after 3 pieces" in runs["raises"].error
    assert runs["raises"].answer  # what it produced before failing is kept
    assert not runs["hangs"].ok and "timed out after 2 s and did not stop" in runs["hangs"].error
    assert not runs["crawls"].ok and runs["crawls"].error.startswith("timed out after 2 s")
    assert runs["crawls"].answer  # the pieces it made before its time was up
    assert not runs["noload"].ok and "injected load failure" in runs["noload"].error
    assert report.layers[0].failed == 4
    assert took < 30, "a hung agent does not hold the run"


def test_aggregator_failure_still_prints_the_proposers(faulty: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", "Which is larger, 9.11 or 9.9?", "--config", str(faulty), "--profile",
              "bad-aggregator", "--max-tokens", "24", "--temperature", "0"])
    out, err = capsys.readouterr()
    assert exc.value.code == 1
    assert err.strip().splitlines()[-1].startswith(
        "localmoa: error: the aggregator (raises) failed: injected failure")
    assert "L1.1 (smollm2-135m):" in err and "L1.2 (smollm2-135m):" in err
    assert "agents" in err  # the metrics tables too


def test_json_carries_what_was_produced_after_a_fault(faulty: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", "Which is larger, 9.11 or 9.9?", "--config", str(faulty), "--profile",
              "bad-aggregator", "--max-tokens", "24", "--temperature", "0", "--json"])
    out, _ = capsys.readouterr()
    assert exc.value.code == 1
    doc = json.loads(out)
    assert doc["ok"] is False and "aggregator (raises) failed" in doc["error"]
    assert [a["ok"] for a in doc["agents"]] == [True, True, False]
    assert all(a["answer"] for a in doc["agents"])


def test_aggregator_failure_error_carries_the_report(faulty: Path) -> None:
    config = load_config(faulty)
    graph = build_graph(config, "bad-aggregator", Overrides(max_tokens=24, temperature=0.0))
    with pytest.raises(AggregatorFailedError) as exc:
        run_moa(config, graph, QUESTION)
    report = exc.value.report
    assert [r.ok for r in report.agents] == [True, True, False]
