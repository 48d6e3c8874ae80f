"""Batched decoding with a real llama.cpp model (SmolLM2-135M from PyPI): several chats as
sequences of one context give the answers they give alone, share their prompt prefix,
keep their own stop strings, and leave the batch one by one."""

from __future__ import annotations

import threading
from pathlib import Path

import llama_cpp.llama_cpp as lib
import pytest

from localmoa.backends.base import GenerateOptions, GenerationStats
from localmoa.backends.batch import Batch
from localmoa.backends.llamacpp.backend import LlamaCppBackend
from localmoa.backends.llamacpp.model import LoadParams, load_llama
from localmoa.backends.llamacpp.spec import LlamaCppSpec, Source
from localmoa.errors import GenerationError
from localmoa.prompts import agent_messages

from .conftest import SAFETY_S

QUESTION = [{"role": "user", "content": "Which is larger, 9.11 or 9.9?"}]
REFERENCES = ["9.9 is larger: 0.9 is more than 0.11.", "9.11 is larger, it has more digits.",
              "Compare the decimals: 9.90 > 9.11, so 9.9."]
SYSTEMS = ["You are a careful assistant.", "You are a teacher.", "You are a skeptic."]
WAIT_S = SAFETY_S  # only ever reached when the behaviour under test is broken


@pytest.fixture(scope="module", params=["worker", "in-process"])
def model(request: pytest.FixtureRequest, smollm2_path: Path):
    """The batch in a model worker process (the default), and in this process
    (``workers: off``): the same decoding loop, behind a pipe or not."""
    if request.param == "in-process":
        yield local_model_of(smollm2_path)
        return
    spec = LlamaCppSpec(backend="llamacpp", source=Source(path=str(smollm2_path)), n_ctx=1024)
    loaded = LlamaCppBackend().load("smollm2", spec, smollm2_path, n_threads=2, n_seq=3)
    assert loaded.pid  # a worker process holds it
    yield loaded
    loaded.unload()


def local_model_of(path: Path):
    return load_llama(LoadParams(name="smollm2", path=str(path), n_ctx=1024, n_seq=3,
                                 n_threads=2))


@pytest.fixture(scope="module")
def local_model(smollm2_path: Path):
    """In this process: a test may watch llama.cpp's own calls."""
    loaded = local_model_of(smollm2_path)
    yield loaded
    loaded.unload()


Result = tuple[str, GenerationStats | None]


def batched(model, requests: list[tuple[list, GenerateOptions]],
            read: dict[int, int] | None = None) -> list[Result]:
    """Run ``requests`` as one batch; member i stops reading after ``read[i]`` pieces.
    A member whose chat fails gets its GenerationError in place of its result."""
    batch = Batch(len(requests), "smollm2#0")
    model.last_batch = batch
    results: list = [("", None)] * len(requests)

    def member(i: int) -> None:
        try:
            with batch.chat(*requests[i]) as stream:
                pieces = []
                for piece in stream:
                    pieces.append(piece)
                    if read and i in read and len(pieces) >= read[i]:
                        break
                results[i] = ("".join(pieces), stream.stats)
        except GenerationError as exc:
            results[i] = exc

    threads = [threading.Thread(target=member, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    model.run_batch(batch, 2)
    for thread in threads:
        thread.join(WAIT_S)
    return results


def test_at_temperature_0_a_batch_answers_as_its_agents_do_alone(model) -> None:
    requests = [(agent_messages(QUESTION, system, REFERENCES),
                 GenerateOptions(temperature=0.0, max_tokens=48)) for system in SYSTEMS]
    together = batched(model, requests)
    assert [text for text, _ in batched(model, requests)] == [t for t, _ in together]
    alone = [model.chat(*request).text() for request in requests]
    # llama.cpp's kernels may order a sum differently for N rows than for one, so a
    # greedy answer can part from the lone one at a near tie (benchmarks/README.md
    # measures how often); most answers are the same to the last token
    assert sum(text == single for (text, _), single in zip(together, alone, strict=True)) >= 1
    for _, stats in together:
        assert stats is not None and stats.batch_size == 3
        # the references come first: all but the agents' own words and the question
        # after them are shared
        assert stats.prompt_tokens // 2 < stats.shared_tokens < stats.prompt_tokens
        assert stats.completion_tokens > 0 and stats.ttft_s > 0


def test_an_agent_that_stops_reading_leaves_and_the_others_go_on(model) -> None:
    requests = [(agent_messages(QUESTION, system, None),
                 GenerateOptions(temperature=0.0, max_tokens=40)) for system in SYSTEMS]
    results = batched(model, requests, read={0: 2})
    assert results[0][1] is None  # it left before its stream ended
    for text, stats in results[1:]:
        assert stats is not None and text and stats.completion_tokens > 2
        assert stats.finish_reason in ("stop", "length")


def test_an_agent_that_stops_reading_leaves_at_once_and_frees_its_cells(
        local_model, monkeypatch: pytest.MonkeyPatch) -> None:
    model = local_model
    freed: list[tuple[int, int]] = []  # (sequence, sequences still running)
    real = lib.llama_memory_seq_rm

    def seq_rm(memory, seq_id, p0, p1):  # the real call, watched
        running = sum(not seq.done for seq in model.last_batch._seqs)
        freed.append((int(seq_id), running))
        return real(memory, seq_id, p0, p1)

    monkeypatch.setattr(lib, "llama_memory_seq_rm", seq_rm)
    requests = [(agent_messages(QUESTION, system, None),
                 GenerateOptions(temperature=0.0, max_tokens=40)) for system in SYSTEMS]
    results = batched(model, requests, read={0: 2})
    assert results[0][1] is None  # it left before its stream ended
    left = next(seq.index for seq in model.last_batch.sequences() if seq.closed)
    assert freed[0] == (left, 2)  # freed while the two others still ran
    for text, stats in results[1:]:  # and they went on to their own ends
        assert stats is not None and text and stats.completion_tokens > 2
        assert stats.finish_reason in ("stop", "length")


def test_each_agent_keeps_its_own_stop_strings_and_limits(model) -> None:
    plain = GenerateOptions(temperature=0.0, max_tokens=40)
    requests = [(QUESTION, plain), (QUESTION, GenerateOptions(temperature=0.0, max_tokens=40,
                                                              stop=("9",))),
                (QUESTION, GenerateOptions(temperature=0.0, max_tokens=3))]
    (full, _), (cut, cut_stats), (short, short_stats) = batched(model, requests)
    assert "9" in full and "9" not in cut and full.startswith(cut)
    assert cut_stats is not None and cut_stats.finish_reason == "stop"
    assert short_stats is not None and short_stats.completion_tokens == 3
    assert short_stats.finish_reason == "length"
    assert model.chat(*requests[1]).text() == cut  # as the single path stops


def test_sampling_at_a_temperature_follows_the_seed(model) -> None:
    options = GenerateOptions(temperature=0.9, max_tokens=24, seed=7)
    first = batched(model, [(QUESTION, options), (QUESTION, options)])
    second = batched(model, [(QUESTION, options), (QUESTION, options)])
    assert first[0][0] == first[1][0] == second[0][0]  # same seed, same sample
    other = batched(model, [(QUESTION, GenerateOptions(temperature=0.9, max_tokens=24,
                                                       seed=s)) for s in (1, 2, 3)])
    assert len({text for text, _ in other}) > 1


def test_a_prompt_longer_than_the_context_fails_only_its_agent(model) -> None:
    long = [{"role": "user", "content": "nine " * 1200}]
    results = batched(model, [(long, GenerateOptions(max_tokens=4)),
                              (QUESTION, GenerateOptions(temperature=0, max_tokens=4))])
    assert isinstance(results[0], GenerationError)
    assert "context window is 1024" in str(results[0])
    text, _ = results[1]
    assert isinstance(text, str) and text
