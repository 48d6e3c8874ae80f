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

    ``system`` is the agent's own system prompt. With references (layers after
    the first, and the aggregator) the aggregate prompt and the numbered
    references are appended to the system message, or form a new system message
    at the front when there is none.
    """
    messages: list[dict[str, str]] = [{"role": m["role"], "content": m["content"]}
                                      for m in conversation]
    if system is not None:
        if messages and messages[0]["role"] == "system":
            messages[0]["content"] = system + "\n\n" + messages[0]["content"]
        else:
            messages.insert(0, {"role": "system", "content": system})
    if references:
        block = aggregate_system(references)
        if messages and messages[0]["role"] == "system":
            messages[0]["content"] = messages[0]["content"] + "\n\n" + block
        else:
            messages.insert(0, {"role": "system", "content": block})
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
