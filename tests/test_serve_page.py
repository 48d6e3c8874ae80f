"""The live page at `/` of `localmoa serve`, in a real browser (Debian's chromium driven by
Playwright): the tiny profile's agents stream into their panels, the answer, the metrics
table and the timeline follow, and the conversation carries on to the next question.

Set LOCALMOA_SCREENSHOT=1 to rewrite docs/serve-page.png (the README's picture)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from .serve_process import Served

REPO = Path(__file__).resolve().parent.parent
SCREENSHOT = REPO / "docs" / "serve-page.png"
QUESTION = "Which is larger, 9.11 or 9.9?"
FOLLOW_UP = "Explain why in one sentence."
READY_TIMEOUT_S = 180.0  # a fresh machine imports llama.cpp and FastAPI first
RUN_TIMEOUT_MS = 120_000  # a whole tiny run on a slow 1-core machine
PROPOSERS = ["L1.1", "L1.2", "L1.3"]
AGENTS = [*PROPOSERS, "AGG"]
#: Variables of the developer's shell that would change what the server does.
CLEARED = ("LOCALMOA_CONFIG", "LOCALMOA_DEBUG", "LOCALMOA_CPU_REPACK", "LOCALMOA_EVENT_LOG",
           "LOCALMOA_NETWORK_LOG", "LOCALMOA_MEMORY_BUDGET", "LOCALMOA_API_KEY", "OLLAMA_HOST")


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("the page's tests need a real browser: install Debian's chromium: "
                    "apt-get install chromium")
    return path


def home_with_verdict(home: Path, repack_verdicts: bytes) -> Path:
    """A fresh LOCALMOA_HOME holding this machine's repack verdict: no canary at start-up."""
    from localmoa.backends.llamacpp import repack

    home.mkdir(parents=True, exist_ok=True)
    (home / repack.CACHE_FILE).write_bytes(repack_verdicts)
    return home


@contextlib.contextmanager
def serve(home: Path, *args: str) -> Iterator[str]:
    """The real `localmoa serve` on a free loopback port (tests/serve_process.py), with
    its own LOCALMOA_HOME; yields its base URL and stops it at the end."""
    env = {**os.environ, "LOCALMOA_HOME": str(home), "HF_HUB_OFFLINE": "1",
           "HF_HUB_CACHE": str(home / "hf-cache")}
    for name in CLEARED:
        env.pop(name, None)
    with Served(*args, env=env, ready_timeout_s=READY_TIMEOUT_S) as served:
        yield served.url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = chromium()
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=executable, headless=True,
                                     args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def server(repack_verdicts: bytes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = home_with_verdict(tmp_path_factory.mktemp("serve-page-home"), repack_verdicts)
    with serve(home) as url:
        yield url


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        yield context.new_page()
    finally:
        context.close()


def panel(page: Page, agent: str) -> Locator:
    return page.locator(f'.agent[data-agent="{agent}"]')


def test_page_streams_every_agent_then_the_answer_and_keeps_the_conversation(
        server: str, page: Page) -> None:
    page.goto(server)
    picker = page.locator("#model")
    expect(picker).to_be_enabled()
    expect(picker).to_have_value("moa:tiny")  # the default when the server offers it
    assert "moa:tiny" in picker.locator("option").all_inner_texts()
    assert "smollm2-135m" in picker.locator("option").all_inner_texts()  # models alone too
    expect(page.locator("#api-curl")).to_contain_text(f"curl -N {server}/v1/localmoa/runs")

    picker.select_option("moa:tiny")
    page.fill("#max-tokens", "64")
    page.fill("#prompt", QUESTION)
    page.click("#send")

    # every agent gets a panel in its layer, and its text streams in
    for agent in AGENTS:
        expect(panel(page, agent).locator(".agent-text")).to_have_text(
            re.compile(r"\S"), timeout=RUN_TIMEOUT_MS)
    expect(page.locator('.layer[data-layer="1"] .agent')).to_have_count(3)
    expect(page.locator('.layer[data-layer="1"] h3')).to_contain_text("proposers")
    expect(page.locator(".layer.aggregator-layer .agent")).to_have_count(1)
    expect(page.locator(".layer.aggregator-layer")).to_contain_text("Aggregator")
    expect(page.locator(".layer.aggregator-layer .layer-note")).to_contain_text(
        "tok/s", timeout=RUN_TIMEOUT_MS)  # from the report: no layer_done for the last
    assert page.locator(".layer").last.get_attribute("class") == "layer aggregator-layer"

    answer_box = page.locator("#answer-box")
    expect(answer_box).to_have_attribute("data-state", "done", timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#answer")).to_have_text(re.compile(r"\S"))
    first_answer = page.locator("#answer").inner_text()
    for agent in AGENTS:
        expect(panel(page, agent)).to_have_attribute("data-state", "done")
        expect(panel(page, agent).locator(".rate")).to_contain_text("tok/s")

    rows = page.locator("#metrics-table tbody tr")
    expect(rows).to_have_count(4)
    assert [r.get_attribute("data-agent") for r in rows.all()] == AGENTS
    for row in rows.all():
        cells = row.locator("td").all_inner_texts()
        assert cells[1] == "smollm2-135m" and cells[-1] == "ok", cells
        assert int(cells[3]) > 0 and int(cells[4]) > 0, cells  # prompt, completion tokens
    expect(page.locator("#totals")).to_contain_text("tok/s")

    # the timeline is drawn from start_s/end_s: one bar per agent, the aggregator last
    bars = page.locator("#timeline-svg rect.bar")
    expect(bars).to_have_count(4)
    spans = {b.get_attribute("data-agent"): (float(b.get_attribute("x") or 0),
                                             float(b.get_attribute("width") or 0))
             for b in bars.all()}
    assert set(spans) == set(AGENTS)
    assert all(width > 0 for _, width in spans.values())
    # the aggregator starts with the proposers (it reads each answer as it ends), and
    # ends after them
    assert spans["AGG"][0] + spans["AGG"][1] >= max(x + w for a, (x, w) in spans.items()
                                                    if a != "AGG") - 1

    # the next question carries the conversation: the first turn is sent, and shown
    page.fill("#prompt", FOLLOW_UP)
    with page.expect_request(lambda r: r.url.endswith("/v1/localmoa/runs")) as sent:
        page.click("#send")
    body = json.loads(sent.value.post_data or "{}")
    assert body["model"] == "moa:tiny" and body["max_tokens"] == 64
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][0]["content"] == QUESTION
    assert body["messages"][1]["content"].strip() == first_answer.strip()
    assert body["messages"][2]["content"] == FOLLOW_UP

    turns = page.locator("#turns .turn")
    expect(turns).to_have_count(1)
    expect(turns.first.locator(".turn-user")).to_have_text(QUESTION)
    expect(turns.first.locator(".turn-answer")).to_have_text(first_answer.strip())
    expect(page.locator("#run-question")).to_have_text(FOLLOW_UP)
    expect(answer_box).to_have_attribute("data-state", "done", timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#timeline-svg rect.bar")).to_have_count(4)

    if os.environ.get("LOCALMOA_SCREENSHOT") == "1":
        page.screenshot(path=str(SCREENSHOT), full_page=True)


def sse(kind: str, data: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n"


def agent_metrics(agent: str, layer: int, ok: bool, start_s: float, end_s: float
                  ) -> dict[str, Any]:
    return {"agent": agent, "model": "smollm2-135m", "layer": layer,
            "role": "aggregator" if agent == "AGG" else "proposer", "ok": ok,
            "error": None if ok else "the worker crashed", "prompt_tokens": 40 if ok else 0,
            "completion_tokens": 12 if ok else 0, "ttft_s": 0.3 if ok else 0.0,
            "decode_tok_per_s": 40.0 if ok else 0.0, "start_s": start_s, "end_s": end_s,
            "batch": 1, "timing": "local", "load_s": 0.0, "load_start_s": None}


def test_page_shows_model_text_as_text_and_failed_agents(server: str, page: Page) -> None:
    """A scripted event stream (the route answers in place of the server): markup in an
    agent's text stays text, a failed agent says why, a refused request fails the turn."""
    markup = '<img src=x onerror="document.title=\'pwned\'"><b>bold</b>'
    agents = [agent_metrics("L1.1", 1, True, 0.0, 1.0),
              agent_metrics("L1.2", 1, False, 0.0, 0.4),
              agent_metrics("AGG", 2, True, 1.1, 2.0)]
    report = {"answer": "9.9 is larger.", "agents": agents, "ok": True, "error": None,
              "layers": [{"layer": 1, "agents": 2, "failed": 1, "wall_s": 1.0,
                          "agg_tok_per_s": 12.0},
                         {"layer": 2, "agents": 1, "failed": 0, "wall_s": 0.9,
                          "agg_tok_per_s": 13.3}],
              "totals": {"wall_s": 2.0, "load_s": 0.0, "prompt_tokens": 80,
                         "completion_tokens": 24, "agents": 3, "failed": 1, "tok_per_s": 12.0}}
    stream = "".join([
        sse("agent_start", {"agent": "L1.1", "model": "smollm2-135m", "layer": 1}),
        sse("agent_start", {"agent": "L1.2", "model": "smollm2-135m", "layer": 1}),
        sse("text", {"agent": "L1.1", "layer": 1, "text": markup}),
        sse("agent_done", agents[1]),
        sse("agent_done", agents[0]),
        sse("layer_done", {"layer": 1, "agents": 2, "failed": 1}),
        sse("agent_start", {"agent": "AGG", "model": "smollm2-135m", "layer": 2}),
        sse("text", {"agent": "AGG", "layer": 2, "text": "9.9 is larger."}),
        sse("agent_done", agents[2]),
        sse("report", report),
    ])
    page.route("**/v1/localmoa/runs", lambda route: route.fulfill(
        status=200, content_type="text/event-stream", body=stream))
    page.goto(server)
    expect(page.locator("#model")).to_be_enabled()
    page.fill("#prompt", QUESTION)
    page.click("#send")

    expect(page.locator("#answer-box")).to_have_attribute("data-state", "done")
    text = panel(page, "L1.1").locator(".agent-text")
    expect(text).to_have_text(markup)
    assert text.locator("img, b").count() == 0
    assert page.title() == "localmoa"
    expect(panel(page, "L1.2")).to_have_attribute("data-state", "failed")
    expect(panel(page, "L1.2").locator(".agent-error")).to_have_text("the worker crashed")
    expect(page.locator('.layer[data-layer="1"] .layer-note')).to_contain_text("1 failed")
    expect(page.locator('#metrics-table tr[data-agent="L1.2"] td').last).to_have_text("failed")
    expect(page.locator("#timeline-svg rect.bar.failed")).to_have_count(1)
    expect(page.locator("#answer")).to_have_text("9.9 is larger.")

    page.unroute("**/v1/localmoa/runs")
    page.route("**/v1/localmoa/runs", lambda route: route.fulfill(
        status=429, content_type="application/json",
        body=json.dumps({"error": {"message": "8 requests are waiting", "type":
                                   "rate_limit_error", "param": None, "code": "queue_full"}})))
    page.fill("#prompt", FOLLOW_UP)
    page.click("#send")
    expect(page.locator("#answer-box")).to_have_attribute("data-state", "failed")
    expect(page.locator("#answer-error")).to_have_text("8 requests are waiting")
    expect(page.locator("#turns .turn")).to_have_count(1)  # the first turn, answered


def test_page_asks_for_the_api_key_and_sends_it(browser: Browser, repack_verdicts: bytes,
                                                tmp_path: Path) -> None:
    key = "page-test-key"
    home = home_with_verdict(tmp_path / "keyed-home", repack_verdicts)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        with serve(home, "--api-key", key) as url:
            page = context.new_page()
            response = page.goto(url)
            assert response is not None and response.status == 200, "GET / needs no key"
            expect(page.locator("#notice")).to_contain_text("API key")
            expect(page.locator("#model")).to_be_disabled()

            with page.expect_request(lambda r: r.url.endswith("/v1/models")) as listed:
                page.fill("#api-key", key)
                page.locator("#api-key").blur()  # the key is taken on change
            assert listed.value.headers.get("authorization") == f"Bearer {key}"
            expect(page.locator("#model")).to_be_enabled()
            expect(page.locator("#model")).to_have_value("moa:tiny")
            expect(page.locator("#notice")).to_be_hidden()
            expect(page.locator("#api-curl")).to_contain_text("Authorization: Bearer")

            page.reload()  # the key stays for the browser session
            expect(page.locator("#api-key")).to_have_value(key)
            expect(page.locator("#model")).to_be_enabled()
    finally:
        context.close()
