"""The aggregate-and-synthesize prompt, prompt templates and how references are injected.

Text from the Mixture-of-Agents paper's reference implementation. Each
reference is one whole response string, numbered from 1 (the reference code
iterated over characters in later rounds; here a reference is never split).

A prompt template (``prompt_template`` of an agent, or of a profile for its
agents that have none; Groq MoA style) replaces the aggregate prompt and the
numbered references at the head of the agent's system message: it is the
agent's "how to use the previous answers" text. Its placeholders:

- ``{references}`` (alias ``{helper_response}``): the previous layer's answers
  numbered ``1. ...\n2. ...``, exactly as the default prints them; empty in the
  first layer, which has no previous answers;
- ``{query}``: the text of the conversation's latest user message;
- ``{layer}``: the agent's layer, from 1 (the aggregator's is L+1).

``{{`` and ``}}`` are literal braces (str.format's rule); anything else in
braces, conversions (``!r``) and format specs (``:>3``) are errors, as is an
empty template. An agent that receives references (layer 2 on, the aggregator)
needs a template that places them; ``config`` checks that with file:line. The
default, no template, is as if the template were the aggregate prompt, a newline
and ``{references}``, used only when there are references.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from string import Formatter

from .types import Message

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


def numbered_references(references: Sequence[str]) -> str:
    """The references numbered ``1. ...``, ``2. ...``, one per line (empty without any)."""
    if isinstance(references, str):  # a lone string would be split into characters
        raise TypeError("references must be a sequence of whole responses, not one string")
    return "\n".join(f"{i}. {ref}" for i, ref in enumerate(references, start=1))


#: Staircase aggregation's instruction (engine/streaming.py): the responses come in parts.
STAIRCASE_PROMPT = (
    AGGREGATE_PROMPT.rsplit("\n\n", 1)[0] + " The responses are still being written: you "
    "get them in parts. Start your response after their first parts; when more parts "
    "come, continue your response from where it stopped, without repeating it."
    "\n\nResponses from models (their first parts):"
)
#: What introduces a staircase's later parts (a new turn of the user's).
STAIRCASE_MORE = ("More of the same responses, each part continuing its response from "
                  "where the last one stopped. Continue your response:")


def aggregate_system(references: Sequence[str]) -> str:
    """The aggregate prompt followed by the references numbered 1., 2., ..."""
    numbered = numbered_references(references)
    return AGGREGATE_PROMPT + ("\n" + numbered if numbered else "")


#: The placeholders a prompt template may use.
TEMPLATE_FIELDS = ("references", "helper_response", "query", "layer")
#: The ones that stand for the references (``helper_response``: Groq MoA's name).
REFERENCE_FIELDS = ("references", "helper_response")
_ALLOWED = ("{references} (or {helper_response}), {query} and {layer}; "
            "write {{ and }} for a literal brace")


def template_pieces(template: str) -> list[tuple[str, str | None]]:
    """The template as (literal text, placeholder name or None) pieces.

    ValueError, with a one-line message, for an empty template, bad brace syntax,
    an unknown placeholder, or a placeholder with a conversion or format spec.
    """
    if not template.strip():
        raise ValueError("the prompt template is empty: write the text that introduces the "
                         "previous answers, with {references} where they go, or leave "
                         "prompt_template out for the default aggregate-and-synthesize prompt")
    try:
        parsed = list(Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"the prompt template is not valid ({exc}); placeholders are "
                         f"{_ALLOWED}") from None
    pieces: list[tuple[str, str | None]] = []
    for literal, name, spec, conversion in parsed:
        if name is not None:
            written = "{" + name + (f"!{conversion}" if conversion else "") + \
                (f":{spec}" if spec else "") + "}"
            if name not in TEMPLATE_FIELDS:
                raise ValueError(f"unknown placeholder {written} in the prompt template; the "
                                 f"allowed ones are {_ALLOWED}")
            if spec or conversion:
                raise ValueError(f"placeholder {written} in the prompt template takes no "
                                 f"conversion or format spec: write {{{name}}}")
        pieces.append((literal, name))
    return pieces


def check_template(template: str) -> str:
    """``template`` if it is a valid prompt template, else ValueError (one line)."""
    template_pieces(template)
    return template


def reference_slots(template: str) -> int:
    """How many times the template places the references (0: it drops them)."""
    return sum(name in REFERENCE_FIELDS for _, name in template_pieces(template))


def latest_query(conversation: Sequence[Message]) -> str:
    """The text of the conversation's latest user message ('' without one)."""
    return next((m["content"] for m in reversed(conversation) if m["role"] == "user"), "")


def render_template(template: str, references: Sequence[str] | None, query: str,
                    layer: int) -> str:
    """The template with its placeholders filled in (no references: ``{references}`` is
    empty), trailing whitespace dropped (a YAML block scalar ends with a newline). A
    value is never itself read as a template: an answer may hold braces."""
    values = {"references": numbered_references(references or []), "query": query,
              "layer": str(layer)}
    values["helper_response"] = values["references"]
    return "".join(literal + (values[name] if name else "")
                   for literal, name in template_pieces(template)).rstrip()


def agent_messages(conversation: Sequence[Message], system: str | None,
                   references: Sequence[str] | None, template: str | None = None,
                   layer: int = 1) -> list[Message]:
    """The messages one agent receives.

    Everything the agents of a layer have in common comes first, so that agents on
    one model share the longest token prefix (batched, it is evaluated once). The
    one system message holds, in this order:

    1. without ``template``: with references (layers after the first, and the
       aggregator), the aggregate prompt and the numbered references; with a
       ``template``: the template rendered for this agent (its ``layer``, the
       latest user message as ``{query}``), in every layer, unless it renders empty;
    2. the conversation's own system message, if it has one;
    3. the agent's own system prompt (``system``), if it has one;

    then the conversation's other messages follow. Without any of these there is no
    system message.
    """
    messages: list[dict[str, str]] = [{"role": m["role"], "content": m["content"]}
                                      for m in conversation]
    if template is not None:
        rendered = render_template(template, references, latest_query(conversation), layer)
        parts = [rendered] if rendered.strip() else []
    else:
        parts = [aggregate_system(references)] if references else []
    if messages and messages[0]["role"] == "system":
        parts.append(messages.pop(0)["content"])
    if system is not None:
        parts.append(system)
    if parts:
        messages.insert(0, {"role": "system", "content": "\n\n".join(parts)})
    return [Message(role=m["role"], content=m["content"]) for m in messages]


def streamed_messages(conversation: Sequence[Message], system: str | None,
                      mark: str, instruction: str = AGGREGATE_PROMPT) -> list[Message]:
    """The messages of an agent whose references stream in (reference streaming): laid
    out so that its prompt only ever grows at one place, ``mark``, near its end.

    1. one system message: the conversation's own, then the agent's ``system``;
    2. the conversation's other messages;
    3. in its latest user message, after the user's text: a blank line, the aggregate
       prompt (``instruction``: a staircase's), a newline and ``mark``, where the
       references go as they come (``streamed_reference``); after the mark only the chat
       template's end of the turn and the start of the answer.

    The references' text is the default's (``1. ...``, ``2. ...``); their order is the
    order their agents finished in.
    """
    messages: list[dict[str, str]] = [{"role": m["role"], "content": m["content"]}
                                      for m in conversation]
    parts = [messages.pop(0)["content"]] if messages and messages[0]["role"] == "system" else []
    if system is not None:
        parts.append(system)
    at = next((i for i in range(len(messages) - 1, -1, -1) if messages[i]["role"] == "user"),
              None)
    block = instruction + "\n" + mark
    if at is None:
        messages.append({"role": "user", "content": block})
    else:
        messages[at]["content"] += "\n\n" + block
    if parts:
        messages.insert(0, {"role": "system", "content": "\n\n".join(parts)})
    return [Message(role=m["role"], content=m["content"]) for m in messages]


def streamed_reference(number: int, answer: str) -> str:
    """Reference ``number`` (from 1) as streamed after the others: ``1. ...``, then
    ``\n2. ...`` (the default's numbered text, piece by piece)."""
    return ("" if number == 1 else "\n") + f"{number}. {answer}"


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
