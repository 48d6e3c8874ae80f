"""One sequence's sampling and its text: the sampler chain llama-cpp-python builds for a
lone chat (a JSON schema's grammar first), a token's bytes, and the text that can be
written so far (whole UTF-8 characters, nothing that may start a stop string)."""

from __future__ import annotations

import codecs
import ctypes
import random
from typing import Any

from ...errors import GenerationError

#: Sampling defaults of llama-cpp-python's chat completion, so that a batched agent
#: samples as a lone one does.
TOP_K = 40
MIN_P = 0.05
TYPICAL_P = 1.0


class Text:
    """Turns a sequence's tokens into text: whole UTF-8 characters only, and nothing
    that might be the start of a stop string until it is known not to be one."""

    def __init__(self, stops: list[str]) -> None:
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stops = stops
        self.pending = ""

    def feed(self, data: bytes) -> tuple[str, bool]:
        """The text that can be written now, and whether a stop string was reached."""
        self.pending += self.decoder.decode(data)
        for stop in self.stops:
            at = self.pending.find(stop)
            if at >= 0:
                out, self.pending = self.pending[:at], ""
                return out, True
        keep = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self.pending)), keep, -1):
                if self.pending.endswith(stop[:n]):
                    keep = n
                    break
        cut = len(self.pending) - keep
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending + self.decoder.decode(b"", final=True), ""
        return out


def grammar_sampler(lib: Any, vocab: Any, grammar: str) -> Any:
    """A llama.cpp grammar sampler for GBNF text whose root rule is ``root``."""
    sampler = lib.llama_sampler_init_grammar(vocab, grammar.encode("utf-8"), b"root")
    if not sampler:
        raise GenerationError("llama.cpp could not parse the grammar made from the JSON "
                              "schema")
    return sampler


def sampler_chain(lib: Any, temperature: float, top_p: float, seed: int | None,
             grammar: Any = None) -> Any:
    """The chain llama-cpp-python builds for a lone chat: the grammar first (only the
    tokens it allows are left to the others), then greedy, or top-k, typical, top-p,
    min-p, temperature and the seeded draw."""
    chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
    if grammar is not None:
        lib.llama_sampler_chain_add(chain, grammar)  # the chain owns it from here
    if temperature <= 0:
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
        return chain
    seed = seed if seed is not None else random.getrandbits(32)
    for sampler in (lib.llama_sampler_init_top_k(TOP_K),
                    lib.llama_sampler_init_typical(TYPICAL_P, 1),
                    lib.llama_sampler_init_top_p(top_p, 1),
                    lib.llama_sampler_init_min_p(MIN_P, 1),
                    lib.llama_sampler_init_temp(temperature),
                    lib.llama_sampler_init_dist(seed)):
        lib.llama_sampler_chain_add(chain, sampler)
    return chain


def token_bytes(lib: Any, vocab: Any, token: int, buffer: Any) -> bytes:
    """The bytes of one token (special tokens render as nothing, as in a lone chat)."""
    n = lib.llama_token_to_piece(vocab, token, buffer, len(buffer), 0, False)
    if n < 0:  # longer than the buffer: ask again with room for it
        buffer = ctypes.create_string_buffer(-n)
        n = lib.llama_token_to_piece(vocab, token, buffer, len(buffer), 0, False)
    return bytes(buffer.raw[:n]) if n > 0 else b""
