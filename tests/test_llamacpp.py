"""The llama.cpp backend on the real SmolLM2-135M GGUF (no fake on this path)."""

from __future__ import annotations

from pathlib import Path

import pytest

from localmoa.backends.base import GenerateOptions
from localmoa.backends.llamacpp.backend import LlamaCppBackend
from localmoa.backends.llamacpp.model import LoadParams, load_llama
from localmoa.backends.llamacpp.spec import LlamaCppSpec, Source
from localmoa.errors import GenerationError, ModelLoadError


@pytest.fixture(scope="module")
def model(smollm2_path: Path):
    spec = LlamaCppSpec(backend="llamacpp", source=Source(path=str(smollm2_path)), n_ctx=512)
    loaded = LlamaCppBackend().load("smollm2", spec, smollm2_path, n_threads=2)
    yield loaded
    loaded.unload()


QUESTION = [{"role": "user", "content": "Name three colours."}]


def test_load_is_timed(model) -> None:
    assert 0 < model.load_s < 30


def test_streaming_chat_and_stats(model) -> None:
    stream = model.chat(QUESTION, GenerateOptions(temperature=0.0, max_tokens=24, seed=1))
    pieces = list(stream)
    assert len(pieces) > 1, "the answer arrives in several pieces"
    text = stream.text()
    assert text == "".join(pieces) and text.strip()
    st = stream.stats
    assert st is not None
    assert st.prompt_tokens > 5  # the chat template wraps the question
    assert 1 <= st.completion_tokens <= 24
    assert st.finish_reason in ("stop", "length")
    if st.finish_reason == "length":
        assert st.completion_tokens == 24
    assert 0 < st.prompt_s <= st.ttft_s
    assert st.decode_tokens == st.completion_tokens - 1 + (st.finish_reason == "stop")
    assert st.prompt_tok_per_s > 0 and st.decode_tok_per_s > 0


def test_greedy_is_deterministic_and_prefix_is_reused(model) -> None:
    opts = GenerateOptions(temperature=0.0, max_tokens=16, seed=3)
    first = model.chat(QUESTION, opts)
    a = first.text()
    second = model.chat(QUESTION, opts)
    assert second.text() == a
    assert second.stats is not None
    # the same prompt again: llama-cpp-python keeps the prefix in the KV cache
    assert second.stats.cached_tokens == second.stats.prompt_tokens - 1


def test_one_instance_refuses_two_generations_at_once(model) -> None:
    opts = GenerateOptions(temperature=0.0, max_tokens=8)
    first = iter(model.chat(QUESTION, opts))
    next(first)
    with pytest.raises(GenerationError, match="already generating"):
        model.chat(QUESTION, opts).text()
    for _ in first:
        pass


def test_unload_frees(smollm2_path: Path) -> None:
    spec = LlamaCppSpec(backend="llamacpp", source=Source(path=str(smollm2_path)), n_ctx=256)
    loaded = LlamaCppBackend().load("smollm2", spec, smollm2_path, n_threads=1)
    pid = loaded.pid
    loaded.unload()
    assert not loaded.alive  # its worker process exited
    assert not Path(f"/proc/{pid}").exists()  # and reaped: its memory is the system's again
    loaded.unload()  # twice is harmless


def test_truncated_gguf_is_a_load_error(tmp_path: Path, smollm2_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(smollm2_path.read_bytes()[: 4 * 1024 * 1024])
    spec = LlamaCppSpec(backend="llamacpp", source=Source(path=str(cut)), n_ctx=256)
    with pytest.raises(ModelLoadError, match="could not load"):
        LlamaCppBackend().load("cut", spec, cut, n_threads=1)


def test_closing_a_stream_frees_the_instance_without_the_gc(model) -> None:
    import gc

    opts = GenerateOptions(temperature=0.0, max_tokens=24)
    gc.disable()  # the stream and its generator form a cycle only the GC would break
    try:
        stream = model.chat(QUESTION, opts)
        pieces = iter(stream)
        next(pieces)
        stream.close()  # what the engine does when an agent is stopped
        del stream, pieces
        assert model.chat(QUESTION, opts).text().strip()  # not "already generating"
    finally:
        gc.enable()


def test_a_workers_tokenizer_answers_during_a_generation(model) -> None:
    """The worker's reader thread tokenizes (llama.cpp's tokenizer only reads the
    vocabulary) while its main thread decodes."""
    import threading

    alone = model.count_tokens("Name three colours.")
    stream = model.chat(QUESTION, GenerateOptions(temperature=0.0, max_tokens=24))
    pieces = iter(stream)
    next(pieces)  # a generation in progress, paused between two tokens
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(
        model.count_tokens("Name three colours.")), daemon=True)
    thread.start()
    thread.join(30)
    assert result == [alone] and alone > 1
    assert model.cut_tokens("Name three colours.", 2) == "Name three"
    assert "".join(pieces)  # the generation went on


def test_the_tokenizer_waits_for_a_generation_on_another_thread(smollm2_path: Path) -> None:
    """In this process (workers: off) one lock orders every use of the llama object."""
    import threading

    model = load_llama(LoadParams(name="smollm2", path=str(smollm2_path), n_ctx=512,
                                  n_threads=2))
    stream = model.chat(QUESTION, GenerateOptions(temperature=0.0, max_tokens=24))
    pieces = iter(stream)
    next(pieces)  # a generation holds the instance, paused between two tokens
    counted = threading.Event()
    result: list[int] = []

    def count() -> None:
        result.append(model.count_tokens("Name three colours."))
        counted.set()

    thread = threading.Thread(target=count, daemon=True)
    thread.start()
    try:
        assert not counted.wait(0.5), "the tokenizer used the instance in mid-generation"
        own = model.count_tokens("Name three colours.")  # this thread may: its own pause
    finally:
        for _ in pieces:
            pass
    thread.join(30)
    assert counted.is_set() and result == [own] and own > 1
    model.unload()


def test_unload_during_a_paused_generation_waits_for_nothing(smollm2_path: Path) -> None:
    spec = LlamaCppSpec(backend="llamacpp", source=Source(path=str(smollm2_path)), n_ctx=256)
    loaded = LlamaCppBackend().load("smollm2", spec, smollm2_path, n_threads=1)
    stream = loaded.chat(QUESTION, GenerateOptions(temperature=0.0, max_tokens=16))
    pieces = iter(stream)
    next(pieces)  # paused mid-generation, its stream not closed (a wrapper's bug, say)
    loaded.unload()  # returns at once: the worker is not stopped under the generation
    assert loaded.alive
    stream.close()  # the generation ends: now the worker exits
    assert not loaded.alive
