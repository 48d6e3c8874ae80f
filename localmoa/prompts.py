"""The aggregate-and-synthesize prompt and how references are injected.

Text from the Mixture-of-Agents paper's reference implementation. Each
reference is one whole response string, numbered from 1 (the reference code
iterated over characters in later rounds; here a reference is never split).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .backends.base import Message

AGGREGATE_PROMPT = (
    "You have been provided with a set of responses from various open-source models to "
    "the latest user query. Your task is to synthesize these responses into a single, "
    "high-quality response. It is crucial to critically evaluate the information provided "
    "in these responses, recognizing that some of it may be biased or incorrect. Your "
    "response should not simply replicate the given answers but should offer a refined, "
    "accurate, and comprehensive reply to the instruction. Ensure your response is "
    "well-structured, coherent, and adheres to the highest standards of accuracy and "
    "reliability.\n\nResponses from models:"
)


def aggregate_system(references: Sequence[str]) -> str:
    """The aggregate prompt followed by the references numbered 1., 2., ..."""
    if isinstance(references, str):  # a lone string would be split into characters
        raise TypeError("references must be a sequence of whole responses, not one string")
    numbered = "".join(f"\n{i}. {ref}" for i, ref in enumerate(references, start=1))
    return AGGREGATE_PROMPT + numbered


def agent_messages(conversation: Sequence[Message], system: str | None,
                   references: Sequence[str] | None) -> list[Message]:
    """The messages one agent receives.

    Everything the agents of a layer have in common comes first, so that agents on
    one model share the longest token prefix (batched, it is evaluated once). The
    one system message holds, in this order:

    1. with references (layers after the first, and the aggregator): the aggregate
       prompt and the numbered references;
    2. the conversation's own system message, if it has one;
    3. the agent's own system prompt (``system``), if it has one;

    then the conversation's other messages follow. Without any of these there is no
    system message.
    """
    messages: list[dict[str, str]] = [{"role": m["role"], "content": m["content"]}
                                      for m in conversation]
    parts = [aggregate_system(references)] if references else []
    if messages and messages[0]["role"] == "system":
        parts.append(messages.pop(0)["content"])
    if system is not None:
        parts.append(system)
    if parts:
        messages.insert(0, {"role": "system", "content": "\n\n".join(parts)})
    return [Message(role=m["role"], content=m["content"]) for m in messages]


TRIM_MARK = " [...]"


def fit_references(references: Sequence[str], budget_tokens: int,
                   count: Callable[[str], int], cut: Callable[[str, int], str],
                   min_tokens: int = 8) -> tuple[list[str], int, int]:
    """Shorten references fairly so that together they take at most ``budget_tokens``.

    Each reference keeps the same share of its tokens (never fewer than
    ``min_tokens``: none is silently dropped) and is marked `` [...]`` where cut.
    Returns the references and their token counts before and after.
    """
    sizes = [count(r) for r in references]
    before = sum(sizes)
    if before <= budget_tokens:
        return list(references), before, before
    share = max(0.0, budget_tokens / before)
    kept = []
    for ref, size in zip(references, sizes, strict=True):
        keep = max(min_tokens, int(size * share))
        kept.append(ref if keep >= size else cut(ref, keep).rstrip() + TRIM_MARK)
    return kept, before, sum(min(count(r), s) for r, s in zip(kept, sizes, strict=True))
