"""A prefix warm-up for an aggregator on a server that reads only whole prompts
(engine/warmed.py, memory/overlap.py's warm tasks): its prompt's head goes out while
the proposers write, its whole prompt (the references in finishing order after that
head) once they end, and only where that is cheap. The server is a wire fake
(pytest-httpserver) that records what it is sent; benchmarks/bench_server_cache.py
measures the same against a real llama-server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from localmoa.config import load_config
from localmoa.engine import RunEvents
from localmoa.prompts import AGGREGATE_PROMPT, STAIRCASE_MORE, STAIRCASE_PROMPT
from localmoa.recipe import Agent, Overrides, build_graph
from localmoa.runtime import run_moa

from .conftest import SAFETY_S, cli
from .test_mixed_backends import SMOL
from .test_openai_backend import chunk, serve_list, sse


def sse_line(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"

QUESTION = "Name two uses of a paperclip."


def write_config(tmp_path: Path, url: str, extra: str = "", concurrency: int = 3) -> Path:
    path = tmp_path / f"warm-{concurrency}-{len(extra)}.yaml"
    path.write_text(f"""\
models:
  smol-local:
    backend: llamacpp
    source: {SMOL}
    n_ctx: 2048
  prop-server:
    backend: openai
    base_url: {url}
    model: prop
    concurrency: {concurrency}
  agg-server:
    backend: openai
    base_url: {url}
    model: agg
    concurrency: {concurrency}
{extra}
profiles:
  warm:
    layers:
      - - {{model: prop-server, system: "Be brief.", max_tokens: 24}}
        - {{model: prop-server, system: "Check for traps.", max_tokens: 24}}
    aggregator: {{model: agg-server, max_tokens: 16}}
  local:
    layers:
      - - {{model: smol-local}}
        - {{model: smol-local}}
    aggregator: {{model: agg-server}}
""", encoding="utf-8")
    return path


def plan_of(config: Path, *args: str) -> dict[str, Any]:
    proc = cli("plan", "--config", str(config), "--json", *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["plan"]


def test_the_plan_warms_a_servers_cache_only_when_it_is_cheap(tmp_path: Path) -> None:
    url = "http://127.0.0.1:9/v1"  # planning contacts no server
    config = write_config(tmp_path, url)
    plan = plan_of(config, "--profile", "warm")
    assert plan["streaming"]["on"] and "warms its server's prompt cache" in \
        plan["streaming"]["why"]
    assert len(plan["waves"]) == 1
    agg = next(t for t in plan["waves"][0]["tasks"] if t["agent"] == "AGG")
    assert agg["follows"] and agg["warm"] and agg["threads"] == 0
    # the server's requests at once are the proposers': no warm-up, today's order
    full = plan_of(write_config(tmp_path, url, concurrency=2), "--profile", "warm")
    assert not full["streaming"]["on"]
    assert "takes 2 request(s) at once and the proposers use them" in full["streaming"]["why"]
    # local proposers use this machine's cores, which the server on loopback shares
    local = plan_of(config, "--profile", "local")["streaming"]
    assert not local["on"] and "runs on this machine" in local["why"]
    stairs = plan_of(config, "--profile", "warm", "--staircase")["streaming"]
    assert stairs["on"] and "each round sending the grown prompt again" in stairs["why"]
    none = write_config(tmp_path, url, extra="    prompt_cache: false")
    assert "keeps no prompt cache" in plan_of(none, "--profile", "warm")["streaming"]["why"]


def test_the_head_goes_out_while_the_proposers_write(httpserver: HTTPServer,
                                                     tmp_path: Path) -> None:
    serve_list(httpserver, "prop", "agg")
    bodies: list[dict[str, Any]] = []
    warmed = threading.Event()
    done: list[str] = []  # proposers ended, when each request came

    def answer(request: Request) -> Response:
        body = json.loads(request.data)
        usage = chunk(usage={"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12})
        if body["model"] == "prop":  # a proposer: its persona in its answer
            persona = body["messages"][0]["content"].split()[0]
            return sse(chunk(f"{persona} bookmark,"), chunk(" and a hook."),
                       chunk(finish="stop"), usage)
        bodies.append({**body, "proposers_done": len(done)})
        warmed.set()
        text = "ok" if len(bodies) == 1 else "The answer."
        return sse(chunk(text), chunk(finish="stop"), usage)

    httpserver.expect_request("/v1/chat/completions").respond_with_handler(answer)
    config = load_config(write_config(tmp_path, httpserver.url_for("/v1")))
    graph = build_graph(config, "warm", Overrides(temperature=0.0, seed=1))

    def on_text(agent: Agent, text: str) -> None:  # no proposer ends before the warm-up
        if agent.layer == 1:
            assert warmed.wait(SAFETY_S)

    def on_done(agent: Agent, run: Any) -> None:
        if agent.layer == 1:
            done.append(agent.id)

    report = run_moa(config, graph, [{"role": "user", "content": QUESTION}],
                     events=RunEvents(on_text=on_text, on_agent_done=on_done))
    assert report.ok and report.answer == "The answer."
    assert len(bodies) == 2
    warm, whole = bodies
    assert warm["max_tokens"] == 1 and warm["temperature"] == 0.0
    assert warm["proposers_done"] < 2 and whole["proposers_done"] == 2
    head = warm["messages"][-1]["content"]
    assert head.startswith(QUESTION) and head.endswith(AGGREGATE_PROMPT + "\n")
    assert whole["messages"][:-1] == warm["messages"][:-1]
    last = whole["messages"][-1]["content"]
    agg = report.agents[-1]
    answers = {a.agent: a.answer for a in report.agents[:2]}
    assert sorted(answers.values()) == ["Be bookmark, and a hook.", "Check bookmark, and a hook."]
    refs = "\n".join(f"{k}. {answers[a]}" for k, a in enumerate(agg.reference_order, 1))
    assert last == head + refs
    assert sorted(agg.reference_order) == ["L1.1", "L1.2"]
    assert whole["max_tokens"] == 16


def test_a_staircase_on_a_server_sends_its_grown_prompt_each_round(tmp_path: Path) -> None:
    """Each proposer streams its first part, then waits until the aggregator's first
    round has been asked for: one round on the first parts, then the rest to its end."""
    bodies: list[dict[str, Any]] = []
    first_round = threading.Event()

    def proposer(persona: str) -> Iterator[str]:
        yield sse_line(chunk(f"{persona} use it as a bookmark,"))
        assert first_round.wait(SAFETY_S)
        yield sse_line(chunk(" or as a hook."))
        yield sse_line(chunk(finish="stop")) + "data: [DONE]\n\n"

    def answer(request: Request) -> Response:
        body = json.loads(request.data)
        if body["model"] == "prop":
            persona = body["messages"][0]["content"].split()[0]
            return Response(proposer(persona), content_type="text/event-stream")
        bodies.append(body)
        text = ["ok", "A paperclip ", "holds pages."][min(len(bodies), 3) - 1]
        if len(bodies) == 2:
            first_round.set()
        return sse(chunk(text), chunk(finish="stop" if len(bodies) == 3 else "length"))

    with HTTPServer(threaded=True) as server:
        serve_list(server, "prop", "agg")
        server.expect_request("/v1/chat/completions").respond_with_handler(answer)
        config = load_config(write_config(tmp_path, server.url_for("/v1")))
        graph = build_graph(config, "warm", Overrides(temperature=0.0, seed=1,
                                                      aggregate="staircase",
                                                      staircase_chunk=4))
        report = run_moa(config, graph, [{"role": "user", "content": QUESTION}])
    assert report.ok and report.answer == "A paperclip holds pages."
    warm, first, rest = bodies
    assert warm["max_tokens"] == 1 and first["max_tokens"] == 4
    assert rest["max_tokens"] == 16 - 1  # what the first round left (one chunk counted)
    head = warm["messages"][-1]["content"]
    assert head.endswith(STAIRCASE_PROMPT + "\n")
    parts = first["messages"][-1]["content"][len(head):]
    assert sorted(parts.split("\n")) == ["1. Be use it as a bookmark,",
                                         "2. Check use it as a bookmark,"]
    # the last round: the first round's messages, its words as an assistant turn, then
    # the rest of the proposers' answers as a new user turn
    assert rest["messages"][:-2] == first["messages"]
    assert rest["messages"][-2] == {"role": "assistant", "content": "A paperclip "}
    more = rest["messages"][-1]
    assert more["role"] == "user" and more["content"].startswith(STAIRCASE_MORE)
    assert more["content"].count("or as a hook.") == 2
