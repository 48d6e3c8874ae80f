"""llama.cpp's batch as the loop fills it (``TokenBatch``), the tokens several prompts
start with (``common_prefix``), and a vocabulary's end-of-generation tokens."""

from __future__ import annotations

from typing import Any

from ...errors import GenerationError


def common_prefix(prompts: list[list[int]]) -> int:
    """Tokens all prompts start with, leaving each at least one of its own (its last
    position must be decoded for it, to sample its first token)."""
    if len(prompts) < 2:
        return 0
    n = 0
    for column in zip(*prompts, strict=False):
        if any(t != column[0] for t in column):
            break
        n += 1
    return min(n, min(len(p) for p in prompts) - 1)


class TokenBatch:
    """A llama_batch we fill token by token."""

    def __init__(self, lib: Any, capacity: int, n_seq: int) -> None:
        self.lib = lib
        self.capacity = capacity
        self.raw = lib.llama_batch_init(capacity, 0, max(1, n_seq))
        self.n = 0

    def add(self, token: int, pos: int, seq_ids: list[int], logits: bool) -> int:
        raw, i = self.raw, self.n
        raw.token[i] = token
        raw.pos[i] = pos
        raw.n_seq_id[i] = len(seq_ids)
        for k, seq_id in enumerate(seq_ids):
            raw.seq_id[i][k] = seq_id
        raw.logits[i] = logits
        self.n += 1
        return i

    def decode(self, ctx: Any) -> None:
        self.raw.n_tokens = self.n
        code = self.lib.llama_decode(ctx, self.raw)
        self.n = 0
        if code != 0:
            reason = ("no room left in the KV cache" if code == 1 else
                      "aborted" if code == 2 else f"error {code}")
            raise GenerationError(f"llama_decode failed: {reason}")

    def free(self) -> None:
        self.lib.llama_batch_free(self.raw)


def end_tokens(lib: Any, vocab: Any) -> list[int]:
    """Every token llama.cpp takes as an end of generation (eos, eot, ``<|im_end|>``,
    ``<|endoftext|>``, FIM ends ...): the control tokens it says are."""
    n = int(lib.llama_vocab_n_tokens(vocab))
    return [t for t in range(n) if lib.llama_vocab_is_control(vocab, t)
            and lib.llama_vocab_is_eog(vocab, t)]
