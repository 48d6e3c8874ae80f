"""What the backends share for structured output (GenerateOptions.json_schema) and
embeddings (LoadedModel.embed), with no backend's library imported at module level.

A schema-constrained answer always parses: llama.cpp samples under a grammar made
from the schema, Ollama and OpenAI-compatible servers are given the schema
(``format`` / ``response_format``). Two things could still cut the JSON short, and
neither is ever returned as an answer: the answer reaching ``max_tokens`` first
(``check_json_answer`` turns it into a GenerationError that says to raise it), and
stop strings (a backend sends none with a schema: the schema says where the answer
ends).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from typing import Any

from ..errors import GenerationError

__all__ = ["check_json_answer", "gbnf", "mean_pooled", "normalised", "stops_for"]


def stops_for(options: Any) -> tuple[str, ...]:
    """The stop strings a backend sends: none when a schema decides where the answer ends
    (a stop string inside a JSON string would cut it short)."""
    return () if options.json_schema is not None else tuple(options.stop)


def check_json_answer(model: str, text: str, finish_reason: str | None,
                      max_tokens: int) -> None:
    """Raise GenerationError unless ``text`` (an answer generated under a JSON schema)
    is whole JSON: a constrained answer is malformed only when it was cut short."""
    try:
        json.loads(text)
    except ValueError as exc:
        if finish_reason == "length":
            raise GenerationError(
                f"model {model!r}: the answer reached max_tokens ({max_tokens}) before the "
                "JSON its schema asks for was complete; raise max_tokens") from None
        raise GenerationError(
            f"model {model!r}: the answer is not the JSON its schema asks for ({exc}; "
            f"finish_reason {finish_reason}): {text[:80]!r}") from None


@functools.lru_cache(maxsize=64)
def _gbnf(schema_json: str) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    return str(json_schema_to_gbnf(schema_json))


def gbnf(schema: dict[str, Any]) -> str:
    """llama.cpp's grammar (GBNF, root rule ``root``) for answers that follow ``schema``,
    made by llama-cpp-python's port of llama.cpp's json-schema-to-grammar (compact JSON:
    at most one space between tokens). GenerationError when it cannot convert it."""
    try:
        return _gbnf(json.dumps(schema))  # key order kept: it is the order written
    except Exception as exc:  # noqa: BLE001 - the converter raises whatever it meets
        raise GenerationError(f"llama.cpp cannot turn this JSON schema into a grammar "
                              f"({type(exc).__name__}: {exc})") from None


def normalised(vector: Sequence[float]) -> list[float]:
    """``vector`` scaled to length 1 (a zero vector stays zero)."""
    norm = math.sqrt(math.fsum(x * x for x in vector))
    return [float(x) / norm for x in vector] if norm > 0 else [float(x) for x in vector]


def mean_pooled(rows: Sequence[Sequence[float]]) -> list[float]:
    """The mean of per-token vectors, normalised (a server that returns one vector per
    token, as llama-cpp-python's does for a model without pooling)."""
    if not rows:
        return []
    width = len(rows[0])
    sums = [math.fsum(row[i] for row in rows) for i in range(width)]
    return normalised([s / len(rows) for s in sums])
