"""What a GGUF header says that matters for memory: ``ModelFacts``, read from a local
header (``model_facts``) or from what a server reports (``facts_from_model_info``), and
which tensors llama.cpp repacks for the CPU (``repacked_bytes_of``). Pure; the memory
model that turns facts into bytes is estimate.py."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .gguf_header import ArraySummary, GgufHeader

#: Tensor types llama.cpp's CPU backend repacks on x86 with AVX2 (so they are not shared
#: via mmap); the backend says which ones it repacks on this machine (LoadSettings).
REPACKED_TYPES = frozenset({"Q4_0", "Q4_K", "IQ4_NL", "MXFP4"})
#: Elements per row an AMX kernel needs (ggml-cpu amx.cpp supports_op: a tile's K).
AMX_ROW_ALIGN = {"Q4_0": 32, "Q4_1": 32, "Q8_0": 32, "Q4_K": 256, "Q5_K": 256, "Q6_K": 256,
                 "IQ4_XS": 256, "F16": 16}
#: Sliding-window layer pattern by architecture when the GGUF does not say.
#: A layer il is sliding-window when (il + 1) % n != 0 (gemma2: every other layer).
SWA_PATTERN = {"gemma2": 2, "gemma3": 6, "gemma3n": 5, "cohere2": 4}


@dataclass(frozen=True)
class ModelFacts:
    """What the header says that matters for memory."""

    architecture: str
    n_layers: int
    n_embd: int
    n_head: int
    n_head_kv: tuple[int, ...]  # per layer
    key_length: int
    value_length: int
    sliding_window: int | None
    swa_layers: tuple[bool, ...]  # per layer
    context_length: int
    n_vocab: int
    weights_bytes: int
    layer_bytes: tuple[int, ...]  # weights of each block
    repacked_bytes: int  # weights llama.cpp repacks on an x86 AVX2 CPU (REPACKED_TYPES)
    output_bytes: int  # non-block weights (embeddings, output)
    parameters: int
    quant: str
    has_chat_template: bool
    #: The matrices a CPU backend may repack (2-D, not the token embeddings):
    #: (type, elements per row, rows, bytes) each.
    matrices: tuple[tuple[str, int, int, int], ...] = ()
    #: Bytes of the vocabulary's longest token (0: unknown): a text of B bytes is at
    #: least B / this many tokens (prompt_fit.py).
    longest_token_bytes: int = 0
    n_ff: int = 0  # the feed-forward's width (the widest layer's)
    n_merges: int = 0  # BPE merges of the tokenizer (0: none, an SPM vocabulary)

    def repacked_bytes_of(self, types: frozenset[str]) -> int:
        """Weights that become private copies when llama.cpp repacks ``types`` (type names
        for the CPU repack kernels, ``amx:TYPE`` for AMX buffers, which take a matrix
        only when its rows are whole tiles)."""
        total = 0
        for kind, row, rows, n_bytes in self.matrices:
            amx = (f"amx:{kind}" in types and row % AMX_ROW_ALIGN.get(kind, 1 << 62) == 0
                   and rows % 32 == 0)
            if amx or (kind in types and rows % 4 == 0):
                total += n_bytes
        return total


def model_facts(header: GgufHeader) -> ModelFacts:
    """Extract the memory-relevant facts of a GGUF header."""
    md = header.metadata
    arch = header.architecture
    n_layers = int(header.arch_value("block_count", 0))
    n_embd = int(header.arch_value("embedding_length", 0))
    n_head = _max_int(header.arch_value("attention.head_count", 1))
    heads_kv = _per_layer(header.arch_value("attention.head_count_kv", n_head), n_layers)
    key_length = int(header.arch_value("attention.key_length", 0) or (n_embd // max(n_head, 1)))
    value_length = int(header.arch_value("attention.value_length", 0) or key_length)
    window = header.arch_value("attention.sliding_window")
    swa = _swa_layers(arch, n_layers, window, header.arch_value("attention.sliding_window_pattern"))
    tokens = md.get("tokenizer.ggml.tokens")
    merges = md.get("tokenizer.ggml.merges")
    vocab = header.arch_value("vocab_size")
    if vocab is None:
        vocab = tokens.count if isinstance(tokens, ArraySummary) else len(tokens or [])
    layer_bytes = [0] * n_layers
    other = 0
    matrices: list[tuple[str, int, int, int]] = []
    params = 0
    type_bytes: dict[str, int] = {}
    for t in header.tensors:
        elements = 1
        for d in t.shape:
            elements *= d
        params += elements
        type_bytes[t.type_name] = type_bytes.get(t.type_name, 0) + t.n_bytes
        block = _block_index(t.name)
        if block is not None and block < n_layers:
            layer_bytes[block] += t.n_bytes
        else:
            other += t.n_bytes
        if len(t.shape) >= 2 and t.name != "token_embd.weight":
            matrices.append((t.type_name, t.shape[0], t.shape[1], t.n_bytes))
    quant = _quant_name(md.get("general.file_type"), type_bytes)
    return ModelFacts(
        architecture=arch, n_layers=n_layers, n_embd=n_embd, n_head=n_head,
        n_head_kv=tuple(heads_kv), key_length=key_length, value_length=value_length,
        sliding_window=int(window) if window else None, swa_layers=tuple(swa),
        context_length=int(header.arch_value("context_length", 0)), n_vocab=int(vocab or 0),
        weights_bytes=sum(t.n_bytes for t in header.tensors), layer_bytes=tuple(layer_bytes),
        repacked_bytes=sum(n for kind, _, _, n in matrices if kind in REPACKED_TYPES),
        output_bytes=other, parameters=params, quant=quant,
        has_chat_template="tokenizer.chat_template" in md,
        matrices=tuple(matrices), longest_token_bytes=_longest_token(tokens),
        n_ff=_max_int(header.arch_value("feed_forward_length", 0)),
        n_merges=merges.count if isinstance(merges, ArraySummary) else len(merges or []))


def _longest_token(tokens: Any) -> int:
    """Bytes of the longest entry of a vocabulary, summarised or decoded (0: none)."""
    if isinstance(tokens, ArraySummary):
        return tokens.longest
    if isinstance(tokens, list):
        return max((len(str(t).encode("utf-8")) for t in tokens), default=0)
    return 0


def facts_from_model_info(model_info: dict[str, Any], size_bytes: int, quant: str,
                          has_template: bool = True) -> ModelFacts:
    """ModelFacts from Ollama's ``/api/show`` ``model_info`` (the GGUF metadata keys)
    and the model's size (no tensor table: the weights are spread evenly)."""
    header = GgufHeader(path=Path("-"), version=3, metadata=dict(model_info))
    facts = model_facts(header)
    n = max(facts.n_layers, 1)
    return replace(facts, weights_bytes=size_bytes, layer_bytes=(size_bytes // n,) * n,
                   output_bytes=0, repacked_bytes=0, matrices=(),
                   parameters=int(model_info.get("general.parameter_count", 0) or 0),
                   quant=quant or facts.quant, has_chat_template=has_template)


def _max_int(value: Any) -> int:
    if isinstance(value, list):
        return max(int(v) for v in value) if value else 0
    return int(value or 0)


def _per_layer(value: Any, n_layers: int) -> list[int]:
    if isinstance(value, list):
        return [int(v) for v in value[:n_layers]] + [0] * max(0, n_layers - len(value))
    return [int(value or 0)] * n_layers


def _swa_layers(arch: str, n_layers: int, window: Any, pattern: Any) -> list[bool]:
    if not window:
        return [False] * n_layers
    if isinstance(pattern, list):  # newer GGUFs: one bool per layer
        return [bool(p) for p in pattern[:n_layers]] + [False] * max(0, n_layers - len(pattern))
    period = int(pattern) if isinstance(pattern, int) and pattern > 0 else SWA_PATTERN.get(arch)
    if not period:
        return [True] * n_layers  # every layer windowed (e.g. Mistral v0.1)
    return [(il + 1) % period != 0 for il in range(n_layers)]


def _block_index(name: str) -> int | None:
    if not name.startswith("blk."):
        return None
    part = name.split(".", 2)[1]
    return int(part) if part.isdigit() else None


# general.file_type -> the quant name llama.cpp prints (the common ones)
_FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
               10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S",
               15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS",
               20: "IQ2_XS", 23: "IQ3_XXS", 25: "IQ4_NL", 26: "IQ3_S", 28: "IQ2_S",
               29: "IQ4_XS", 30: "IQ1_M", 32: "BF16"}


def _quant_name(file_type: Any, type_bytes: dict[str, int]) -> str:
    if isinstance(file_type, int) and file_type in _FILE_TYPES:
        return _FILE_TYPES[file_type]
    return max(type_bytes, key=lambda k: type_bytes[k]) if type_bytes else "unknown"
