"""Footprints from GGUF headers, against llama.cpp's numbers and measured memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from localmoa.errors import InvalidModelFileError
from localmoa.memory.estimate import LoadSettings, batched_pools, footprint, kv_bytes, model_facts
from localmoa.memory.gguf_header import read_header

MiB = 1 << 20
HERE = Path(__file__).parent


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


def measure(path: Path, n_ctx: int, kv_type: str, n_seq: int = 1) -> dict[str, int]:
    proc = subprocess.run([sys.executable, str(HERE / "measure_footprint.py"), str(path),
                           str(n_ctx), kv_type, str(n_seq)], capture_output=True, text=True,
                          timeout=300, check=True)
    return json.loads(proc.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["smollm2", "gemma"])
@pytest.mark.parametrize("n_ctx", [512, 4096])
def test_estimate_within_20_percent_of_measured(model: str, n_ctx: int, request) -> None:
    path = request.getfixturevalue(f"{model}_path")
    predicted = footprint(model, model_facts(read_header(path)), LoadSettings(n_ctx=n_ctx))
    measured = measure(path, n_ctx, "f16")
    # RSS: one instance in its own process maps each page once, and unlike PSS it does not
    # shrink when another process (a parallel test run) maps the same GGUF
    ratio = predicted.total_bytes / measured["rss"]
    assert 0.8 <= ratio <= 1.2, (predicted.total_bytes / MiB, measured["rss"] / MiB)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["smollm2", "gemma"])
def test_a_batched_instance_within_20_percent_of_measured(model: str, request) -> None:
    path = request.getfixturevalue(f"{model}_path")
    facts = model_facts(read_header(path))
    settings = LoadSettings(n_ctx=1024)
    predicted = batched_pools(model, facts, settings, [3])[3]["ram"]
    measured = measure(path, 1024, "f16", n_seq=3)
    ratio = predicted / measured["rss"]
    assert 0.8 <= ratio <= 1.2, (predicted / MiB, measured["rss"] / MiB)
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
