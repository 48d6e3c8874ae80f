"""Footprints from GGUF headers, against llama.cpp's numbers and measured memory."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from localmoa.errors import InvalidModelFileError
from localmoa.memory import estimate
from localmoa.memory.estimate import (
    LoadSettings,
    ModelFacts,
    batched_pools,
    compute_bytes,
    footprint,
    kv_bytes,
    model_facts,
    tokenizer_bytes,
)
from localmoa.memory.gguf_header import read_header

MiB = 1 << 20
HERE = Path(__file__).parent
Q4_K = frozenset({"Q4_K"})

#: Qwen2.5-Coder-0.5B-Instruct Q4_K_M's header facts (architecture qwen2): 24 layers,
#: 14 heads (2 KV) of 64, n_ff 4864, 151,936 tokens and 151,387 BPE merges; its Q4_K
#: matrices (28.05 MiB) are the ones an AVX2 CPU repacks.
QWEN05 = ModelFacts(
    architecture="qwen2", n_layers=24, n_embd=896, n_head=14, n_head_kv=(2,) * 24,
    key_length=64, value_length=64, sliding_window=None, swa_layers=(False,) * 24,
    context_length=32768, n_vocab=151_936, weights_bytes=485_452_288,
    layer_bytes=(10_300_000,) * 24, repacked_bytes=29_417_472, output_bytes=238_239_232,
    parameters=630_167_424, quant="Q4_K_M", has_chat_template=True,
    matrices=(("Q4_K", 896, 32_832, 29_417_472),), n_ff=4864, n_merges=151_387)


def test_smollm2_header_facts(smollm2_path: Path) -> None:
    facts = model_facts(read_header(smollm2_path))
    assert (facts.architecture, facts.n_layers, facts.n_head) == ("llama", 30, 9)
    assert facts.n_head_kv == (3,) * 30 and facts.key_length == 64
    assert facts.n_vocab == 49152 and facts.quant == "Q4_1"
    assert facts.repacked_bytes == 0  # Q4_1 is not repacked: instances share the mapping
    assert facts.has_chat_template and not any(facts.swa_layers)
    assert facts.weights_bytes == 96_576_768


def test_gemma3_header_facts(gemma_path: Path) -> None:
    facts = model_facts(read_header(gemma_path))
    assert (facts.architecture, facts.n_layers, facts.n_vocab) == ("gemma3", 18, 262144)
    assert facts.key_length == facts.value_length == 256
    assert facts.sliding_window == 512
    assert facts.swa_layers.count(True) == 15  # every 6th layer is global
    assert facts.repacked_bytes == 13_271_040  # its 27 Q4_K tensors are repacked
    assert not facts.has_chat_template


@pytest.mark.parametrize(("n_ctx", "kv_type", "expected_mib"), [
    (512, "f16", 11.25), (4096, "f16", 90.0), (4096, "q8_0", 90.0 * 34 / 64)])
def test_smollm2_kv_matches_llama_cpp(smollm2_path: Path, n_ctx: int, kv_type: str,
                                      expected_mib: float) -> None:
    # llama.cpp logs "CPU KV buffer size = 90.00 MiB" for n_ctx 4096 f16
    facts = model_facts(read_header(smollm2_path))
    assert kv_bytes(facts, LoadSettings(n_ctx=n_ctx, kv_type=kv_type)) / MiB == pytest.approx(
        expected_mib, rel=1e-3)


def test_gemma3_sliding_window_layers(gemma_path: Path) -> None:
    facts = model_facts(read_header(gemma_path))
    # llama-cpp-python keeps full-size SWA caches: llama.cpp logs 12 + 60 MiB at 4096
    assert kv_bytes(facts, LoadSettings(n_ctx=4096)) == 72 * MiB
    # a windowed cache (llama.cpp's swa_full=false) holds window + batch cells instead
    windowed = kv_bytes(facts, LoadSettings(n_ctx=4096, swa_full=False))
    assert windowed == (3 * 4096 + 15 * 1024) * 1024


def test_gpu_offload_moves_layers_to_the_gpu_pool(smollm2_path: Path) -> None:
    facts = model_facts(read_header(smollm2_path))
    cpu = footprint("s", facts, LoadSettings(n_ctx=2048))
    half = footprint("s", facts, LoadSettings(n_ctx=2048, n_gpu_layers=15, gpu_pool="gpu0"))
    full = footprint("s", facts, LoadSettings(n_ctx=2048, n_gpu_layers=-1, gpu_pool="gpu0"))
    no_gpu = footprint("s", facts, LoadSettings(n_ctx=2048, n_gpu_layers=-1, gpu_pool=None))
    assert set(cpu.pools) == {"ram"} and no_gpu.pools == cpu.pools
    assert 0 < half.pools["gpu0"] < full.pools["gpu0"]
    assert full.pools["ram"] < half.pools["ram"] < cpu.pools["ram"]
    assert full.cost(2)["gpu0"] == 2 * full.pools["gpu0"]  # VRAM copies are not shared


def test_header_facts_for_the_compute_and_the_tokenizer(smollm2_path: Path,
                                                      gemma_path: Path) -> None:
    smollm2 = model_facts(read_header(smollm2_path))
    gemma = model_facts(read_header(gemma_path))
    assert (smollm2.n_ff, smollm2.n_merges) == (1536, 48_900)  # a BPE vocabulary
    assert (gemma.n_ff, gemma.n_merges) == (2048, 0)  # SentencePiece: no merges


def test_qwen2_tokenizer_is_its_tokens_and_its_merges() -> None:
    # vocab-only loads measured 47.1 MiB for qwen2's tokenizer (2.7 MiB of it fixed),
    # 17.0 MiB for SmolLM2's (49k tokens, 49k merges), 42.1 MiB for Gemma-3's (262k, none)
    tokenizer = tokenizer_bytes(QWEN05)
    assert 44 * MiB < tokenizer < (47.1 - 2.7) * MiB * 1.02
    smollm2 = replace(QWEN05, n_vocab=49_152, n_merges=48_900)
    gemma = replace(QWEN05, n_vocab=262_144, n_merges=0)
    assert tokenizer_bytes(smollm2) / MiB == pytest.approx(17.0 - 2.7, rel=0.03)
    assert tokenizer_bytes(gemma) / MiB == pytest.approx(42.1 - 2.7, rel=0.03)
    # the merges are a third of it; a fit on per-token bytes alone missed them
    assert tokenizer - estimate.TOKENIZER_PER_TOKEN * QWEN05.n_vocab > 21 * MiB


@pytest.mark.parametrize(("n_ctx", "n_seq", "touched_mib"), [
    (2048, 1, 42.0), (4096, 1, 43.8)])
def test_qwen2_compute_is_its_feed_forward_and_the_mask(n_ctx: int, n_seq: int,
                                                        touched_mib: float) -> None:
    # measured: RSS between the load and the filled context (one token's logits asked)
    predicted = compute_bytes(QWEN05, LoadSettings(n_ctx=n_ctx, parallel=n_seq))
    assert predicted >= 3 * 4864 * 512 * 4  # gate, up and their product for 512 tokens
    assert predicted / MiB == pytest.approx(touched_mib, rel=0.05)
    # what llama.cpp reserves (the logits of every token of a micro-batch) is not counted
    assert predicted < 4 * QWEN05.n_vocab * 512 / 5


def test_repacked_weights_count_twice_with_mmap() -> None:
    # llama.cpp copies them into a private buffer; the mapped pages stay resident too
    mapped = footprint("q", QWEN05, LoadSettings(n_ctx=2048, repacked_types=Q4_K))
    unshared = footprint("q", QWEN05, LoadSettings(n_ctx=2048, repacked_types=frozenset()))
    read = footprint("q", QWEN05, LoadSettings(n_ctx=2048, repacked_types=Q4_K,
                                               use_mmap=False))
    assert mapped.weights_bytes == QWEN05.weights_bytes + 29_417_472
    assert mapped.shared_weights_bytes == unshared.shared_weights_bytes == QWEN05.weights_bytes
    assert mapped.extra_instance_bytes - unshared.extra_instance_bytes == 29_417_472
    assert read.weights_bytes == QWEN05.weights_bytes and read.shared_weights_bytes == 0


def test_each_sequence_of_a_batch_adds_its_logits_and_sampler() -> None:
    one = footprint("q", QWEN05, LoadSettings(n_ctx=2048))
    three = footprint("q", QWEN05, LoadSettings(n_ctx=2048, parallel=3))
    rows = 2 * estimate.OUTPUT_PER_VOCAB_SEQ * QWEN05.n_vocab  # two more sequences
    more_compute = three.compute_bytes - one.compute_bytes  # the KQ mask, x 3 cells
    grown = three.overhead_bytes - one.overhead_bytes
    assert grown == pytest.approx((rows + estimate.HEADROOM * (rows + more_compute)), abs=2)
    assert three.kv_bytes == 3 * one.kv_bytes
    assert more_compute == pytest.approx(2 * 2048 * 512 * 2 * estimate.FLASH_SCRATCH_PER_MASK,
                                         abs=2)


def test_embedding_output_bound_is_the_backends() -> None:
    from localmoa.backends.llamacpp import embed

    assert estimate.EMBED_OUTPUT_BYTES == embed.EMBED_OUTPUT_BYTES


#: Measured peaks (RSS growth of a fresh process: load, fill every cell, a chat, an
#: embedding; benchmarks/bench_estimate.py, 2026-12-03) of Qwen2.5-Coder-0.5B Q4_K_M
#: (the estimator before issue 26 predicted 0.85-0.89x of them).
QWEN05_PEAKS_MIB = [(2048, 1, 641.4), (4096, 1, 668.0), (2048, 3, 689.8), (4096, 3, 768.4)]


@pytest.mark.parametrize(("n_ctx", "n_seq", "measured_mib"), QWEN05_PEAKS_MIB)
def test_qwen2_estimate_is_a_worst_case_within_15_percent(n_ctx: int, n_seq: int,
                                                           measured_mib: float) -> None:
    settings = LoadSettings(n_ctx=n_ctx, repacked_types=Q4_K)
    if n_seq == 1:
        predicted = footprint("q", QWEN05, settings).total_bytes
    else:
        predicted = batched_pools("q", QWEN05, settings, [n_seq])[n_seq]["ram"]
    assert 1.0 <= predicted / MiB / measured_mib <= 1.15, predicted / MiB


def measure(path: Path, n_ctx: int, kv_type: str, n_seq: int = 1) -> int:
    """The peak growth of a fresh process that loads ``path``, fills its context and
    chats (RSS: one instance in its own process maps each page once, and unlike PSS it
    does not shrink when another process, a parallel test run, maps the same GGUF)."""
    proc = subprocess.run([sys.executable, str(HERE / "measure_footprint.py"), str(path),
                           str(n_ctx), kv_type, str(n_seq)], capture_output=True, text=True,
                          timeout=600, check=True)
    out = json.loads(proc.stdout)
    return max([out["peak_rss"]] + [stage["rss"] for stage in out["stages"].values()])


def repacked_here() -> frozenset[str]:
    from localmoa.backends.llamacpp import repack

    return repack.private_types(repack.choose(None))


@pytest.mark.slow
@pytest.mark.parametrize("model", ["smollm2", "gemma"])
@pytest.mark.parametrize("n_ctx", [512, 4096])
def test_estimate_is_a_worst_case_within_15_percent(model: str, n_ctx: int, request) -> None:
    path = request.getfixturevalue(f"{model}_path")
    predicted = footprint(model, model_facts(read_header(path)),
                          LoadSettings(n_ctx=n_ctx, repacked_types=repacked_here()))
    measured = measure(path, n_ctx, "f16")
    ratio = predicted.total_bytes / measured
    assert 1.0 <= ratio <= 1.15, (predicted.total_bytes / MiB, measured / MiB)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["smollm2", "gemma"])
def test_a_batched_instance_is_a_worst_case_within_15_percent(model: str, request) -> None:
    path = request.getfixturevalue(f"{model}_path")
    facts = model_facts(read_header(path))
    settings = LoadSettings(n_ctx=1024, repacked_types=repacked_here())
    predicted = batched_pools(model, facts, settings, [3])[3]["ram"]
    measured = measure(path, 1024, "f16", n_seq=3)
    ratio = predicted / measured
    assert 1.0 <= ratio <= 1.15, (predicted / MiB, measured / MiB)
    # one instance with room for 3 sequences costs less than 3 instances
    assert predicted < footprint(model, facts, settings).cost(3)["ram"]


def test_truncated_gguf_is_refused_before_loading(smollm2_path: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(smollm2_path.read_bytes()[: 40 * MiB])
    with pytest.raises(InvalidModelFileError, match="truncated"):
        read_header(cut)
    tiny = tmp_path / "tiny.gguf"
    tiny.write_bytes(smollm2_path.read_bytes()[:1000])
    with pytest.raises(InvalidModelFileError, match="truncated"):
        read_header(tiny)


def test_not_gguf(tmp_path: Path) -> None:
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(InvalidModelFileError, match="not a GGUF file"):
        read_header(bad)


def test_header_reader_agrees_with_the_gguf_package(smollm2_path: Path) -> None:
    from gguf import GGUFReader

    ours = read_header(smollm2_path)
    theirs = GGUFReader(str(smollm2_path))
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    assert [t.n_bytes for t in ours.tensors] == [int(t.n_bytes) for t in theirs.tensors]
    assert ours.metadata["llama.block_count"] == theirs.fields["llama.block_count"].contents()
