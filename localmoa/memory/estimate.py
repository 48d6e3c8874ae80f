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
from typing import Any

from .facts import (  # noqa: F401 - re-exported: where callers have always found them
    AMX_ROW_ALIGN,
    REPACKED_TYPES,
    SWA_PATTERN,
    ModelFacts,
    facts_from_model_info,
    model_facts,
)

MiB = 1 << 20

#: Bytes per element of each KV cache type.
KV_TYPE_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q5_1": 24 / 32,
                 "q5_0": 22 / 32, "q4_1": 20 / 32, "q4_0": 18 / 32}

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
    #: Its backend can evaluate a prompt that grows while it waits (reference streaming:
    #: the aggregator reads each proposer's answer as that proposer ends).
    streams: bool = False
    #: Its server keeps a prompt cache (llama-server's cache_prompt, Ollama's slots): a
    #: request that starts as an earlier one did evaluates only what is new. With
    #: reference streaming, the aggregator's prompt head is sent while the proposers
    #: write (a warm-up), and its whole prompt once they end.
    prompt_cache: bool = False
    #: A server in another process on this machine (loopback): its threads share the
    #: cores of the models localmoa runs itself.
    shares_cores: bool = False
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
