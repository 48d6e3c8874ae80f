"""A prompt that cannot fit the agents' contexts is refused before any model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from localmoa.memory.estimate import model_facts
from localmoa.memory.gguf_header import read_model_header
from localmoa.prompt_fit import PromptTooLongError, check_fits, min_tokens
from localmoa.recipe import Agent, MoaGraph

from .conftest import cli


def agent(aid: str, layer: int, model: str, job: int = 0) -> Agent:
    return Agent(id=aid, layer=layer, index=1, model=model, system=None, temperature=0.7,
                 top_p=1.0, max_tokens=64, seed=None, job=job)


def graph(layer: list[tuple[str, str]], aggregator: str, aggregate: str = "always") -> MoaGraph:
    agents = [agent(aid, 1, model) for aid, model in layer]
    return MoaGraph(profile="p", layers=[agents], aggregator=agent("AGG", 2, aggregator),
                    models=sorted({m for _, m in layer} | {aggregator}), aggregate=aggregate)


CTX = {"small": 100, "big": 10_000, "daemon": 50}
LONGEST = {"small": 10, "big": 10, "daemon": 0}  # a daemon's vocabulary is unknown


def check(g: MoaGraph, text: str) -> None:
    check_fits(g, [{"role": "user", "content": text}], CTX.__getitem__, LONGEST.__getitem__)


@pytest.mark.parametrize(("n_bytes", "longest", "tokens"), [
    (0, 10, 0), (1, 10, 1), (10, 10, 1), (11, 10, 2), (1000, 162, 7), (5, 0, 0)])
def test_the_fewest_tokens_a_text_can_take(n_bytes: int, longest: int, tokens: int) -> None:
    assert min_tokens(n_bytes, longest) == tokens


@pytest.mark.parametrize(("layer", "aggregator", "aggregate", "size", "refused"), [
    ([("L1.1", "small"), ("L1.2", "big")], "big", "always", 5000, False),  # one proposer fits
    ([("L1.1", "small"), ("L1.2", "small")], "big", "always", 5000, True),  # none fits
    ([("L1.1", "big")], "small", "always", 5000, True),  # the aggregator cannot hold it
    ([("L1.1", "big")], "small", "never", 5000, False),  # ... but a vote needs none
    ([("L1.1", "small")], "small", "always", 990, False),  # 99 tokens at least: fits 100
    ([("L1.1", "small")], "small", "always", 1000, True),  # 100 tokens at least: no room
    ([("L1.1", "daemon")], "daemon", "always", 10**6, False),  # unknown: its backend says
])
def test_refused_only_when_a_layer_or_the_aggregator_cannot_hold_it(
        layer: list[tuple[str, str]], aggregator: str, aggregate: str, size: int,
        refused: bool) -> None:
    g = graph(layer, aggregator, aggregate)
    if refused:
        with pytest.raises(PromptTooLongError, match=r"at least \d+ tokens .* holds \d+"):
            check(g, "x" * size)
    else:
        check(g, "x" * size)


def test_a_merged_request_is_judged_by_its_own_agents() -> None:
    g = MoaGraph(profile="p", layers=[[agent("L1.1", 1, "small"), agent("1/L1.1", 1, "big", 1)]],
                 aggregator=agent("AGG", 2, "small"),
                 more_aggregators=(agent("1/AGG", 2, "big", 1),), models=["big", "small"])
    conversation = [{"role": "user", "content": "x" * 5000}]
    check_fits(g, conversation, CTX.__getitem__, LONGEST.__getitem__, job=1)
    with pytest.raises(PromptTooLongError):
        check_fits(g, conversation, CTX.__getitem__, LONGEST.__getitem__, job=0)


def test_the_bound_never_exceeds_the_real_count(smollm2_path: Path) -> None:
    """The lower bound holds against SmolLM2's own tokenizer on text of long tokens."""
    from llama_cpp import Llama

    longest = model_facts(read_model_header(smollm2_path)).longest_token_bytes
    assert 16 <= longest < 1024
    vocab = Llama(str(smollm2_path), vocab_only=True, verbose=False)
    for text in (" " * 5000, "=" * 5000, "hello world " * 500, "\u00e9\u4e2d" * 900):
        data = text.encode("utf-8")
        assert min_tokens(len(data), longest) <= len(vocab.tokenize(data, add_bos=False))


def test_a_huge_prompt_is_refused_before_any_model_loads(tmp_path: Path) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("word " * 400_000, encoding="utf-8")  # 2 MB: far over tiny's 2048
    log = tmp_path / "events.jsonl"
    proc = cli("run", "-f", str(prompt), env={"LOCALMOA_EVENT_LOG": str(log)})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "the prompt is too long: 1999999 bytes are at least" in lines[0]
    assert "n_ctx" in lines[0] and "Traceback" not in proc.stderr
    kinds = [json.loads(line)["event"] for line in log.read_text().splitlines()] \
        if log.exists() else []
    assert "loading" not in kinds, kinds
