"""Whether a conversation can fit the agents' contexts, decided before any model loads.

Counting a prompt's tokens needs the model's tokenizer, and tokenizing a 50 MB prompt
in every proposer only to learn that it overflows n_ctx takes minutes. A lower bound
costs nothing: no token of a vocabulary stands for more bytes of text than its longest
entry (GGUF stores each token as its text, and byte-level BPE and SentencePiece spell a
byte with one or more bytes), so a conversation of B bytes is at least
``ceil(B / longest)`` tokens. When that bound already exceeds an agent's ``n_ctx``, the
agent cannot answer, whatever the exact count.

A run is refused when a proposer layer has no agent that can hold the conversation, or
when the final aggregator cannot (its answer is the run's). Agents whose model's
vocabulary is unknown (a daemon's or a server's model) are taken to fit: their backend
answers for itself. The check is pure; ``longest_token_bytes`` reads a GGUF header's
vocabulary lengths once per file (cached: the header was read by the preflight already).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import UsageError
from .recipe import Agent, MoaGraph


class PromptTooLongError(UsageError):
    """The conversation cannot fit the contexts of the agents that must answer it."""


def conversation_bytes(conversation: Sequence[Any]) -> int:
    """UTF-8 bytes of every message's text."""
    return sum(len(str(m.get("content") or "").encode("utf-8", "surrogatepass"))
               for m in conversation)


def min_tokens(n_bytes: int, longest_token_bytes: int) -> int:
    """The fewest tokens ``n_bytes`` of text can take in a vocabulary whose longest token
    spells ``longest_token_bytes`` bytes (0: unknown, then 0)."""
    if longest_token_bytes <= 0:
        return 0
    return -(-n_bytes // longest_token_bytes)


def longest_token_bytes(path: Path) -> int:
    """Bytes of the longest token of the GGUF model at ``path`` (0 when unreadable: the
    load reports why)."""
    try:
        stat = path.stat()
    except OSError:
        return 0
    return _longest_of(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _longest_of(path: Path, size: int, mtime_ns: int) -> int:
    from .errors import LocalMoaError
    from .memory.estimate import model_facts
    from .memory.gguf_header import read_model_header

    try:
        return model_facts(read_model_header(path)).longest_token_bytes
    except LocalMoaError:
        return 0


def check_fits(graph: MoaGraph, conversation: Sequence[Any], n_ctx: Callable[[str], int],
               longest_token: Callable[[str], int], job: int = 0) -> None:
    """Raise PromptTooLongError when ``conversation`` cannot fit: no agent of some proposer
    layer can hold it, or the aggregator cannot. ``n_ctx(model)`` is a model's context,
    ``longest_token(model)`` the bytes of its vocabulary's longest token (0: unknown).
    In a merged graph, ``job`` names the request whose agents read ``conversation``."""
    size = conversation_bytes(conversation)
    bound: dict[str, int] = {}

    def needs(agent: Agent) -> int:
        if agent.model not in bound:
            bound[agent.model] = min_tokens(size, longest_token(agent.model))
        return bound[agent.model]

    def fits(agent: Agent) -> bool:
        return needs(agent) < n_ctx(agent.model)

    for number, everyone in enumerate(graph.layers, start=1):
        layer = [a for a in everyone if a.job == job]
        if layer and not any(fits(a) for a in layer):
            best = max(layer, key=lambda a: n_ctx(a.model) - needs(a))
            raise _too_long(size, best, needs(best), n_ctx(best.model), longest_token,
                            f"no agent of layer {number} can hold it")
    aggregators = [a for a in (graph.aggregator, *graph.more_aggregators) if a.job == job]
    reads = graph.aggregate != "never" and (graph.select is None or graph.select.by == "judge")
    if reads and aggregators and not fits(aggregators[0]):
        agg = aggregators[0]
        raise _too_long(size, agg, needs(agg), n_ctx(agg.model), longest_token,
                        "the aggregator cannot hold it")


def _too_long(size: int, agent: Agent, tokens: int, ctx: int,
              longest_token: Callable[[str], int], why: str) -> PromptTooLongError:
    return PromptTooLongError(
        f"the prompt is too long: {size} bytes are at least {tokens} tokens for "
        f"{agent.model!r} (no token of its vocabulary spells more than "
        f"{longest_token(agent.model)} bytes), and its context holds {ctx} (n_ctx); {why}. "
        "Shorten the prompt, or give the model a larger n_ctx in models.yaml")
