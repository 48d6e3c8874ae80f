"""Embeddings from a llama.cpp context that also chats (LoadedModel.embed).

llama-cpp-python embeds only with a context created for it (``embedding=True``),
which makes every later decode output every token: a chat's prefill then pays for
logits it never reads, and the output buffer grows to n_batch x n_vocab floats.
Instead, the chat context turns embeddings on for the call and off again
(``llama_set_embeddings``), as llama-server does per request:

- the context is cleared (a batch does the same; the next chat prefills again),
  each text is decoded alone as sequence 0, and the context is cleared after it;
- a model without pooling of its own (every causal chat model: SmolLM2, Llama,
  Qwen, Gemma) gives one vector per token: the text is decoded in chunks of a few
  tokens, so that the output rows llama.cpp keeps (logits + embedding per token) stay
  under ``EMBED_OUTPUT_BYTES``, and the token vectors are averaged here;
- a model with pooling in its GGUF (an embedding model: mean, CLS or last token)
  pools itself, over one decode of at most n_ubatch tokens;
- a reranker (rank pooling) gives a score, not a vector: None.

Each vector is the mean over the text's tokens, L2-normalised. A text longer than the
context window is cut to it. Embedding never touches what chat and batches use: the
KV cache is empty before and after, and the context's embeddings flag is off again.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

from ...errors import GenerationError
from ..structured import normalised

#: The most bytes of output rows one embedding chunk may need (each token's logits and
#: vector, 4 bytes a value). llama.cpp keeps its output buffer at the largest size it
#: needed, so a model that embedded holds up to this much more than one that never did
#: (SmolLM2: 21-token chunks, about 4.2 MiB). The memory estimator does not count it.
EMBED_OUTPUT_BYTES = 4 << 20


def chunk_tokens(n_vocab: int, n_embd: int, n_ubatch: int) -> int:
    """Tokens decoded at once when averaging token vectors: as many as the output budget
    holds, at least 1, at most a micro-batch."""
    per_token = 4 * (n_vocab + n_embd)
    return max(1, min(n_ubatch, EMBED_OUTPUT_BYTES // per_token))


def embed_texts(llm: Any, texts: Sequence[str], n_ctx_seq: int) -> list[list[float]] | None:
    """One mean-pooled, L2-normalised vector per text from ``llm``'s context; None when
    the model's pooling gives no vector (a reranker)."""
    import llama_cpp.llama_cpp as lib

    ctx = llm.ctx
    pooling = int(lib.llama_pooling_type(ctx))
    if pooling == lib.LLAMA_POOLING_TYPE_RANK:
        return None
    own_pooling = pooling != lib.LLAMA_POOLING_TYPE_NONE
    vocab = lib.llama_model_get_vocab(llm.model)
    n_embd = int(lib.llama_model_n_embd(llm.model))
    n_ubatch = int(lib.llama_n_ubatch(ctx))
    chunk = n_ubatch if own_pooling else chunk_tokens(int(lib.llama_vocab_n_tokens(vocab)),
                                                       n_embd, n_ubatch)
    limit = min(n_ctx_seq, n_ubatch) if own_pooling else n_ctx_seq
    memory = lib.llama_get_memory(ctx)
    _clear(lib, llm, memory)
    batch = lib.llama_batch_init(chunk, 0, 1)
    lib.llama_set_embeddings(ctx, True)
    try:
        vectors = []
        for text in texts:
            tokens = _tokens(llm, lib, vocab, text)[:limit]
            vectors.append(_embed_one(lib, ctx, batch, tokens, chunk, n_embd, own_pooling))
            _clear(lib, llm, memory)
        return vectors
    finally:
        lib.llama_set_embeddings(ctx, False)
        lib.llama_batch_free(batch)
        _clear(lib, llm, memory)


def _clear(lib: Any, llm: Any, memory: Any) -> None:
    """Empty the KV cache; llama-cpp-python's own prompt cache no longer matches it."""
    if memory:  # an encoder-only model has none
        lib.llama_memory_clear(memory, True)
    llm.reset()


def _tokens(llm: Any, lib: Any, vocab: Any, text: str) -> list[int]:
    """The text's tokens as the model reads a prompt (its BOS where it adds one); an empty
    text is its BOS (else EOS) token, so that every text has a vector."""
    tokens = [int(t) for t in llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)]
    if not tokens:
        bos = int(lib.llama_vocab_bos(vocab))
        tokens = [bos if bos >= 0 else int(lib.llama_vocab_eos(vocab))]
    return tokens


def _embed_one(lib: Any, ctx: Any, batch: Any, tokens: list[int], chunk: int, n_embd: int,
               own_pooling: bool) -> list[float]:
    import numpy as np  # llama-cpp-python's own dependency

    total = np.zeros(n_embd, dtype=np.float64)
    for start in range(0, len(tokens), chunk):
        part = tokens[start:start + chunk]
        for i, token in enumerate(part):
            batch.token[i] = token
            batch.pos[i] = start + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = True
        batch.n_tokens = len(part)
        code = lib.llama_decode(ctx, batch)
        if code != 0:
            raise GenerationError(f"llama_decode failed while embedding (error {code})")
        if own_pooling:
            return normalised(_row(lib.llama_get_embeddings_seq(ctx, 0), n_embd).tolist())
        for i in range(len(part)):
            total += _row(lib.llama_get_embeddings_ith(ctx, i), n_embd)
    return normalised((total / len(tokens)).tolist())


def _row(pointer: Any, n: int) -> Any:
    """The ``n`` floats llama.cpp holds at ``pointer``, copied."""
    import numpy as np

    if not pointer:
        raise GenerationError("llama.cpp returned no embedding for the text")
    return np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)),
                                 shape=(n,)).astype(np.float64)
