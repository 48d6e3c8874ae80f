"""What an OpenAI-compatible server's answers mean: a streamed chat's chunks become
text and GenerationStats (the server's own ``timings`` where llama-server sends them,
else ``usage`` and this side's clocks), and ``/embeddings`` rows become vectors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..base import GenerationStats
from ..structured import mean_pooled, normalised


def one_vector(embedding: Any) -> list[float]:
    """A normalised vector from one ``data[].embedding``: a vector, or one per token."""
    if embedding and isinstance(embedding[0], list):
        return mean_pooled([[float(x) for x in row] for row in embedding])
    return normalised([float(x) for x in embedding])


@dataclass
class Tally:
    """What a streamed answer told so far; ``stats`` turns it into GenerationStats."""

    started: float
    pieces: int = 0
    first_at: float | None = None
    last_at: float | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    timings: dict[str, Any] | None = None
    done: bool = False
    answer: list[str] = field(default_factory=list)

    def add(self, chunk: dict[str, Any], now: float) -> str | None:
        """Take one chunk; returns its text, if any."""
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        if isinstance(chunk.get("timings"), dict):
            self.timings = chunk["timings"]
        choices = chunk.get("choices") or []
        if not choices or not isinstance(choices[0], dict):
            return None
        self.finish_reason = choices[0].get("finish_reason") or self.finish_reason
        delta = choices[0].get("delta")
        text = delta.get("content") if isinstance(delta, dict) else None
        if not text:
            return None
        self.pieces += 1
        self.first_at = self.first_at if self.first_at is not None else now
        self.last_at = now
        self.answer.append(str(text))
        return str(text)

    def stats(self, ended: float) -> GenerationStats:
        first = self.first_at if self.first_at is not None else ended
        last = self.last_at if self.last_at is not None else first
        ttft = first - self.started
        t = self.timings
        if t and "predicted_n" in t:  # llama-server's own measurements
            cached = int(t.get("cache_n") or 0)
            predicted = int(t["predicted_n"])
            return GenerationStats(
                prompt_tokens=int(t.get("prompt_n") or 0) + cached, completion_tokens=predicted,
                ttft_s=ttft, prompt_s=float(t.get("prompt_ms") or 0) / 1000,
                decode_s=float(t.get("predicted_ms") or 0) / 1000, decode_tokens=predicted,
                cached_tokens=cached, finish_reason=self.finish_reason, timing="server")
        if self.usage:
            prompt = int(self.usage.get("prompt_tokens") or 0)
            completion = int(self.usage.get("completion_tokens") or 0)
            details = self.usage.get("prompt_tokens_details") or {}
            cached = int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
        else:  # llama-cpp-python's server streams no usage: a chunk is a token
            prompt, completion, cached = 0, self.pieces, 0
        return GenerationStats(
            prompt_tokens=prompt, completion_tokens=completion, ttft_s=ttft, prompt_s=ttft,
            decode_s=last - first, decode_tokens=max(completion - 1, 0), cached_tokens=cached,
            finish_reason=self.finish_reason, timing="client")
