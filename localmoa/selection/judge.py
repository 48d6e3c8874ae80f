"""The ``judge`` selector: the aggregator's model reads the candidates and names the
best by its number. It is asked to check each answer, not to write one, and its output
is constrained to the valid numbers (a JSON schema: ``{"best": N}``, N in 1..n, the
grammar path the choosing router uses): whatever it samples names a candidate.

When the candidates all agree (consensus.agreement), the judge is not called: the
agreed answer stands (``aggregate: auto``'s short-cut, applied to selection).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from . import Candidate, Selection

#: The judge's prompt template (prompts.py placeholders; {{ }} are literal braces).
TEMPLATE = (
    "You are a careful reviewer. Below are {n} candidate answers to the user's request, "
    "numbered.\n\nCheck each one in turn: does it do exactly what was asked, is it "
    "correct, and is it complete? Look for wrong facts, wrong arithmetic, code that would "
    "fail on the request's examples, and missing parts. Do not write a new answer and do "
    "not merge them.\n\nReply with the number of the best candidate only, as JSON: "
    '{{{{"best": N}}}}.\n\nCandidate answers:\n{{references}}')
#: The judge writes ``{"best": N}``: a few tokens are enough.
MAX_TOKENS = 16


def template(candidates: int) -> str:
    return TEMPLATE.format(n=candidates)


def schema(candidates: int) -> dict[str, object]:
    """The judge's output: ``{"best": N}``, N one of 1..``candidates`` (an object at the
    top, as OpenAI's strict structured output wants)."""
    return {"type": "object", "required": ["best"], "additionalProperties": False,
            "properties": {"best": {"enum": list(range(1, candidates + 1))}}}


def schema_text(candidates: int) -> str:
    return json.dumps(schema(candidates))


def parse(reply: str, candidates: int) -> int | None:
    """The 0-based candidate the judge named (``{"best": N}``, else the first whole
    number in its reply); None when it names none in range."""
    try:
        found: object = json.loads(reply)
    except ValueError:
        found = None
    number = found.get("best") if isinstance(found, dict) else None
    if not isinstance(number, int) or isinstance(number, bool):
        match = re.search(r"\d+", reply)
        number = int(match.group()) if match else None
    return number - 1 if number is not None and 1 <= number <= candidates else None


def by_judge(
    candidates: Sequence[Candidate], reply: str, judge_model: str, fallback: Selection
) -> Selection:
    """The candidate the judge named, or ``fallback`` (the confidence selector's choice)
    when it named none."""
    index = parse(reply, len(candidates))
    table = [
        {"agent": c.agent, "model": c.model, "chosen": i == index} for i, c in enumerate(candidates)
    ]
    if index is None:
        return Selection(
            "judge",
            fallback.index,
            fallback.why,
            fallback.scores,
            f"the judge's reply {reply[:40]!r} named no candidate: chosen by confidence",
        )
    return Selection(
        "judge", index, f"{judge_model} named answer {index + 1} of {len(candidates)}", table
    )
