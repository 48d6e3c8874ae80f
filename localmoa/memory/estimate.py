"""How much memory a model instance takes, from its GGUF header alone.

``footprint(header, settings)`` is pure; ``read_header`` is the only I/O.

What llama.cpp (through llama-cpp-python 0.3.x, CPU) was measured to hold, part by
part (RSS of a fresh process at each stage: after the load, after filling the
context, after a chat and an embedding; tests/measure_footprint.py, on SmolLM2-135M
Q4_1, Gemma-3-270M Q4_K_M and Qwen2.5-Coder 0.5B/1.5B Q4_K_M; benchmarks/README.md,
"`bench_estimate.py`"):

- weights: the tensor bytes, memory-mapped and read whole at load (llama.cpp maps
  with MAP_POPULATE). A second instance of the same file shares those pages.
- repacked weights: tensors llama.cpp *repacks* for faster CPU matmuls (Q4_0, Q4_K,
  IQ4_NL on x86 AVX2 / ARM) get a private copy per instance, *and* the mapped pages
  they were read from stay resident: with mmap they count twice in the first
  instance (Qwen2.5-Coder-1.5B: 597 MiB of its 1,060 MiB are repacked Q4_K).
- KV cache: sum over layers of (n_embd_k_gqa + n_embd_v_gqa) x cells x bytes per
  element, cells = n_ctx (x parallel) padded to 256. llama-cpp-python keeps
  sliding-window layers at full size (swa_full), as measured on Gemma-3.
- compute: llama.cpp reserves a buffer sized for n_vocab x n_ubatch logits
  (98 MiB SmolLM2, 300 MiB Qwen2.5-0.5B, 515 MiB Gemma-3), but a chat asks for
  the logits of one token per sequence, so a decode touches only the activations
  of one layer's busiest step: the feed-forward's gate, up and their product
  (3 x n_ff floats per token of a micro-batch), a few n_embd-wide tensors, the KQ
  mask (f16 with flash attention), and the activations quantised for the weights'
  dot products. Without flash attention the KQ scores come on top (fitted below).
- output and sampling: the logits rows llama.cpp keeps (n_vocab floats per
  sequence, up to EMBED_OUTPUT_BYTES once a model has embedded) and each
  sequence's sampler candidates (n_vocab x 12 B).
- tokenizer: per vocabulary entry its text, the id <-> text maps and the piece
  cache; per BPE merge a node of the rank map with its two strings (measured with
  vocab-only loads: SmolLM2 49k tokens + 49k merges 17.0 MiB, Gemma-3 262k tokens
  42.1 MiB, Qwen2 152k tokens + 151k merges 47.1 MiB).
- context: llama.cpp's context, graph metadata and threads, llama-cpp-python's
  arrays, and the library code a load touches (RSS; shared with other processes
  running llama.cpp).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .gguf_header import ArraySummary, GgufHeader

MiB = 1 << 20

#: Bytes per element of each KV cache type.
KV_TYPE_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q5_1": 24 / 32,
                 "q5_0": 22 / 32, "q4_1": 20 / 32, "q4_0": 18 / 32}
#: Tensor types llama.cpp's CPU backend repacks on x86 with AVX2 (so they are not shared
#: via mmap); the backend says which ones it repacks on this machine (LoadSettings).
REPACKED_TYPES = frozenset({"Q4_0", "Q4_K", "IQ4_NL", "MXFP4"})
#: Elements per row an AMX kernel needs (ggml-cpu amx.cpp supports_op: a tile's K).
AMX_ROW_ALIGN = {"Q4_0": 32, "Q4_1": 32, "Q8_0": 32, "Q4_K": 256, "Q5_K": 256, "Q6_K": 256,
                 "IQ4_XS": 256, "F16": 16}
#: Sliding-window layer pattern by architecture when the GGUF does not say.
#: A layer il is sliding-window when (il + 1) % n != 0 (gemma2: every other layer).
SWA_PATTERN = {"gemma2": 2, "gemma3": 6, "gemma3n": 5, "cohere2": 4}

# Fitted on SmolLM2 and Gemma-3 with flash attention off (n_ctx 512..8192).
ATTN_SCRATCH_PER_HEAD = 1.45  # x n_kv x n_ubatch x 4 B, per attention head (no flash attn)
ATTN_SCRATCH_PER_MASK = 1.32  # x n_kv x n_ubatch x 4 B, per KQ mask (2 with sliding windows)
FLASH_SCRATCH_PER_MASK = 1.4  # x n_kv x n_ubatch x 2 B with flash attention: the mask, its copy
#: Floats per micro-batch token of one layer's busiest step: the feed-forward's gate, up and
#: their product (x n_ff), and the residual, normed input, query and attention output (x the
#: wider of n_embd and n_head x head size).
ACT_FF_TENSORS = 3
ACT_EMBD_TENSORS = 4
#: Bytes per element of the activations quantised for a matmul (q8_K: 292 per 256).
ACT_QUANT_BYTES = 292 / 256
#: Per vocabulary entry and per BPE merge (measured: vocab-only loads of three tokenizers).
TOKENIZER_PER_TOKEN = 158
TOKENIZER_PER_MERGE = 150
#: The library code a load and a decode touch (11.7-12.9 MiB of RSS): the pages of one
#: file, which a second instance (another worker process) shares.
LIBRARY_BYTES = 13 * MiB
#: llama.cpp's context, graph metadata and threads, llama-cpp-python's arrays and the
#: tokenizer's fixed part (anonymous: 14.6-18.5 MiB measured), and the library code.
OVERHEAD_FIXED_BYTES = 18 * MiB + LIBRARY_BYTES
#: Per sequence: its logits row (4 B) and its sampler's candidates (12 B) per vocab entry.
OUTPUT_PER_VOCAB_SEQ = 16
#: The output rows a model that embedded keeps (backends/llamacpp/embed.EMBED_OUTPUT_BYTES).
EMBED_OUTPUT_BYTES = 4 * MiB
#: Room over the measured parts that are not exact from the header (compute, overhead):
#: their sum came within 0.5% of the measured peaks, and the same load varies by about
#: 1 MiB from run to run (allocator, threads), so the worst case keeps a margin.
HEADROOM = 0.05
#: A model worker process before its load: Python, numpy and llama-cpp-python imported
#: (PSS measured: 26-27 MiB; private 21 MiB).
WORKER_PROCESS_BYTES = 28 * MiB


@dataclass(frozen=True)
class LoadSettings:
    """How a model will be loaded: what changes its footprint."""

    n_ctx: int
    kv_type: str = "f16"
    parallel: int = 1
    n_gpu_layers: int = 0
    n_batch: int = 512
    flash_attn: bool | None = None  # None: llama.cpp's auto, on wherever supported (CPU: all)
    use_mmap: bool = True
    swa_full: bool = True
    gpu_pool: str | None = None  # the pool offloaded layers go to; None: no usable GPU
    #: Weight types llama.cpp copies into private repacked buffers (empty: repacking off).
    repacked_types: frozenset[str] = REPACKED_TYPES
    #: Loaded in a model worker process of its own (its interpreter counts too).
    worker_process: bool = False

    @property
    def uses_flash_attn(self) -> bool:
        if self.kv_type not in ("f16", "f32", "bf16"):
            return True  # a quantised KV cache needs it
        return True if self.flash_attn is None else self.flash_attn


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


#: What would make a model fit a pool too small for it: the setting to write, and the
#: bytes it saves (None: not known).
Hint = tuple[str, float | None]


@dataclass(frozen=True)
class Footprint:
    """Memory of one model instance: bytes per pool, plus what its backend wants to report.

    A backend that knows only its pools builds one with ``Footprint.of_pools``. The
    component fields (weights, KV cache, compute, overhead, the KV type) are llama.cpp's
    memory model (``footprint`` below, which Ollama's estimate uses too); they default to
    nothing."""

    model: str
    n_ctx: int
    kv_type: str = ""
    weights_bytes: int = 0
    kv_bytes: int = 0
    compute_bytes: int = 0
    overhead_bytes: int = 0
    #: Weights every further instance of the same file shares (mmap, not repacked, on CPU).
    shared_weights_bytes: int = 0
    #: Code pages every further instance shares (llama.cpp's library, in its overhead).
    shared_code_bytes: int = 0
    #: Bytes of the first instance in each pool ("ram", "gpu0", "ollama@host" ...).
    pools: dict[str, int] = field(default_factory=dict)
    #: Runs in this process on this machine's cores (not in an Ollama daemon).
    local: bool = True
    #: Pools of one instance whose context has room for n sequences (a batch), by n;
    #: empty when its agents are not batched.
    batched_pools: dict[int, dict[str, int]] = field(default_factory=dict)
    #: Most agents that may use the model at once (an Ollama daemon's parallel, a
    #: server's concurrency); 0: any.
    parallel_limit: int = 0
    #: Models that share ``parallel_limit`` (one server's requests); "": the model alone.
    parallel_group: str = ""
    #: Its memory is not budgeted here (a server that holds the model already): its
    #: pools carry no bytes, only the model's place.
    external: bool = False
    #: What the backend wants to report beside the bytes (JSON-able), as it likes.
    details: dict[str, Any] = field(default_factory=dict)
    #: The backend's own advice when the model does not fit (the planner's refusal lists
    #: it after a shorter n_ctx). None: none given, which for a footprint of llama.cpp's
    #: memory model (a KV type set) means llama.cpp's (``llama_cpp_hints``).
    hints: tuple[Hint, ...] | None = None

    @classmethod
    def of_pools(cls, model: str, n_ctx: int, pools: dict[str, int], *,
                 details: dict[str, Any] | None = None, hints: tuple[Hint, ...] = (),
                 **more: Any) -> Footprint:
        """A backend-neutral footprint: only bytes per pool (a remote pool's may be 0), and
        ``more`` of the fields above (``local``, ``parallel_limit``, ``external`` ...);
        the llama.cpp component fields stay empty, a second instance shares nothing."""
        return cls(model=model, n_ctx=n_ctx, pools=dict(pools), details=dict(details or {}),
                   hints=tuple(hints), **more)

    def refusal_hints(self) -> tuple[Hint, ...]:
        """What would make this model fit, its backend's advice, most specific first."""
        if self.hints is not None:
            return self.hints
        return llama_cpp_hints(self) if self.kv_type else ()

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.compute_bytes + self.overhead_bytes

    @property
    def shared_bytes(self) -> int:
        """What a second instance of the same model shares with the first, in RAM."""
        return self.shared_weights_bytes + self.shared_code_bytes

    @property
    def extra_instance_bytes(self) -> int:
        """What a second instance of the same model adds (it shares the mapped weights
        and the library code)."""
        return self.total_bytes - self.shared_bytes

    def cost(self, instances: int, seqs: int = 1) -> dict[str, int]:
        """Bytes per pool of ``instances`` instances loaded at once, the first with room
        for ``seqs`` sequences (a batch), the others for one."""
        if instances <= 0:
            return {}
        if seqs > 1:
            if seqs not in self.batched_pools:
                raise ValueError(f"{self.model}: no footprint for a batch of {seqs}")
            out = dict(self.batched_pools[seqs])
            if instances > 1:
                for pool, amount in self.cost(instances - 1).items():
                    extra = amount - (self.shared_bytes if pool == "ram" else 0)
                    out[pool] = out.get(pool, 0) + extra
            return out
        out = dict(self.pools)
        out["ram"] = out.get("ram", 0) + (instances - 1) * (
            self.pools.get("ram", 0) - self.shared_bytes)
        for pool, amount in self.pools.items():
            if pool != "ram":
                out[pool] = amount * instances  # VRAM copies are never shared
        return out


def llama_cpp_hints(fp: Footprint) -> tuple[Hint, ...]:
    """llama.cpp's advice for a model that does not fit: a q8_0 KV cache (when it is a
    float type), a smaller quant, GPU layers."""
    hints: list[Hint] = []
    saving = q8_0_saving(fp)
    if saving is not None:
        hints.append(("kv_type: q8_0", saving))
    hints.append(("a smaller quant of the model (e.g. Q4_K_M instead of Q8_0; Q3_K_M saves "
                  "about a fifth of the weights)", None))
    hints.append(("n_gpu_layers: -1 on a machine with a GPU", None))
    return tuple(hints)


def q8_0_saving(fp: Footprint) -> float | None:
    """Bytes a q8_0 KV cache would save over ``fp``'s; None when its cache is not of a
    float type (already quantised, or none)."""
    if fp.kv_type not in ("f16", "f32", "bf16"):
        return None
    return fp.kv_bytes * (1 - KV_TYPE_BYTES["q8_0"] / KV_TYPE_BYTES[fp.kv_type])


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


def kv_cells(facts: ModelFacts, settings: LoadSettings, sliding: bool) -> int:
    """KV cells of one layer: the context (x parallel) padded to 256, or the window."""
    full = _pad(settings.n_ctx * settings.parallel, 256)
    if not sliding or settings.swa_full or not facts.sliding_window:
        return full
    n_ubatch = min(settings.n_batch, settings.n_ctx, 512)
    return min(full, _pad(facts.sliding_window * settings.parallel + n_ubatch, 256))


def kv_bytes(facts: ModelFacts, settings: LoadSettings) -> int:
    """Sum over layers of (n_embd_k_gqa + n_embd_v_gqa) x cells x bytes per element."""
    per_elem = KV_TYPE_BYTES[settings.kv_type]
    total = 0.0
    for il in range(facts.n_layers):
        width = facts.n_head_kv[il] * (facts.key_length + facts.value_length)
        total += width * kv_cells(facts, settings, facts.swa_layers[il]) * per_elem
    return int(total)


def compute_bytes(facts: ModelFacts, settings: LoadSettings) -> int:
    """The compute buffer's pages a decode touches while prefilling a full context: one
    layer's busiest step and the KQ mask, for a micro-batch (see module doc)."""
    n_kv = _pad(settings.n_ctx * settings.parallel, 256)
    n_ubatch = min(settings.n_batch, settings.n_ctx, 512)
    masks = 2 if any(facts.swa_layers) else 1
    width = max(facts.n_embd, facts.n_head * max(facts.key_length, facts.value_length))
    activations = n_ubatch * (4 * (ACT_FF_TENSORS * facts.n_ff + ACT_EMBD_TENSORS * width)
                              + ACT_QUANT_BYTES * max(facts.n_ff, width))
    if settings.uses_flash_attn:
        return int(n_kv * n_ubatch * 2 * FLASH_SCRATCH_PER_MASK * masks + activations)
    per_token = 4 * n_ubatch * (ATTN_SCRATCH_PER_HEAD * facts.n_head
                                + ATTN_SCRATCH_PER_MASK * masks)
    # the KQ scores and the feed-forward's tensors are live at different steps, but the
    # allocator may place them side by side (SmolLM2 at n_ctx 512: 20.9 MiB touched)
    return int(n_kv * per_token + activations)


def tokenizer_bytes(facts: ModelFacts) -> int:
    """llama.cpp's vocabulary: its tokens (text, id <-> text maps, piece cache) and its
    BPE merges (the rank map), beyond a fixed part counted with the context."""
    return TOKENIZER_PER_TOKEN * facts.n_vocab + TOKENIZER_PER_MERGE * facts.n_merges


def overhead_bytes(facts: ModelFacts, settings: LoadSettings) -> int:
    """Everything but weights, KV cache and compute: the tokenizer, the context, the
    output rows and samplers of its sequences, a worker process (see module doc)."""
    output = OUTPUT_PER_VOCAB_SEQ * facts.n_vocab * settings.parallel + EMBED_OUTPUT_BYTES
    worker = WORKER_PROCESS_BYTES if settings.worker_process else 0
    measured = OVERHEAD_FIXED_BYTES + tokenizer_bytes(facts) + output
    return int(measured + HEADROOM * (measured + compute_bytes(facts, settings))) + worker


def footprint(name: str, facts: ModelFacts, settings: LoadSettings) -> Footprint:
    """The Footprint of one instance of a model under ``settings`` (pure)."""
    kv = kv_bytes(facts, settings)
    compute = compute_bytes(facts, settings)
    overhead = overhead_bytes(facts, settings)
    offloaded = 0
    if settings.gpu_pool and settings.n_gpu_layers:
        offloaded = facts.n_layers if settings.n_gpu_layers < 0 else min(
            settings.n_gpu_layers, facts.n_layers)
    # llama.cpp offloads the last n_gpu_layers blocks, and the output layer with all of them.
    on_gpu = sum(facts.layer_bytes[facts.n_layers - offloaded:]) if offloaded else 0
    if offloaded == facts.n_layers and offloaded:
        on_gpu += facts.output_bytes // 2  # the output matrix; the embeddings stay on the CPU
    fraction = offloaded / facts.n_layers if facts.n_layers else 0.0
    kv_gpu = int(kv * fraction)
    cpu_weights = facts.weights_bytes - on_gpu
    # A repacked tensor is copied into a private buffer of each instance; with mmap the
    # mapped pages it was read from stay resident too (and are shared, as all the file's).
    copies = int(facts.repacked_bytes_of(settings.repacked_types) * (1 - fraction))
    if settings.use_mmap:
        shared = cpu_weights
    else:
        shared, copies = 0, 0  # read into anonymous buffers, the repacked ones once
    weights = facts.weights_bytes + copies
    pools = {"ram": cpu_weights + copies + (kv - kv_gpu) + overhead
             + (0 if offloaded else compute)}
    if offloaded and settings.gpu_pool:
        # A GPU compute buffer is allocated for real (not touched lazily): full logits.
        gpu_compute = max(compute, 4 * facts.n_vocab * min(settings.n_batch, 512))
        pools[settings.gpu_pool] = on_gpu + kv_gpu + gpu_compute
        compute = gpu_compute
    return Footprint(model=name, n_ctx=settings.n_ctx, kv_type=settings.kv_type,
                     weights_bytes=weights, kv_bytes=kv, compute_bytes=compute,
                     overhead_bytes=overhead, shared_weights_bytes=shared,
                     shared_code_bytes=LIBRARY_BYTES, pools=pools)


def batched_pools(name: str, facts: ModelFacts, settings: LoadSettings,
                  sizes: range | list[int]) -> dict[int, dict[str, int]]:
    """Pools of one instance whose context has room for n sequences of n_ctx tokens,
    for each n of ``sizes``: one unified KV cache of n x n_ctx cells (a shared prefix
    is stored once; each sequence's own part and generation after it) and one compute
    buffer sized for it; the weights and the rest once (pure)."""
    return {n: footprint(name, facts, replace(settings, parallel=n)).pools
            for n in sizes if n > 1}


def _pad(n: int, to: int) -> int:
    return (n + to - 1) // to * to


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
