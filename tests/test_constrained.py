"""Structured output and embeddings on llama.cpp, with the real SmolLM2-135M.

An answer under a JSON schema is sampled under a grammar made from it: at a high
temperature, over several seeds, alone and as a sequence of a batch, in this
process and in a model worker, it always parses and validates. Embeddings come
from the chat context itself: one normalised vector per text, the same before
and after a chat, and the same as llama-cpp-python's own embedding context gives.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from localmoa.backends.base import GenerateOptions
from localmoa.backends.llamacpp.backend import LlamaCppBackend
from localmoa.backends.llamacpp.embed import EMBED_OUTPUT_BYTES, chunk_tokens
from localmoa.backends.llamacpp.model import (
    LlamaCppModel,
    LoadParams,
    llama_defaults,
    load_llama,
    repack_allowed,
)
from localmoa.backends.llamacpp.spec import LlamaCppSpec, Source
from localmoa.errors import GenerationError
from localmoa.prompts import agent_messages
from localmoa.selection import judge

from .conftest import SAFETY_S
from .test_batch_llamacpp import batched

ROUTE = {"type": "object", "properties": {"specialist": {"enum": ["math", "writing", "trivia"]}},
         "required": ["specialist"], "additionalProperties": False}
CONFIDENT = {"type": "object", "properties": {"confident": {"type": "boolean"}},
             "required": ["confident"], "additionalProperties": False}
ASK = [{"role": "system", "content": "Pick the specialist for the question. Answer in JSON."},
       {"role": "user", "content": "What is the integral of x squared?"}]
SEEDS = range(4)
HOT = 1.5  # a temperature at which SmolLM2 writes anything it may
TEXTS = ["What is the integral of x squared?", "Write a haiku about autumn leaves.",
         "Who painted the Mona Lisa?"]
WAIT_S = SAFETY_S  # only ever reached when the behaviour under test is broken


def hot(seed: int, schema: dict[str, Any] | None = ROUTE, **more: Any) -> GenerateOptions:
    more.setdefault("max_tokens", 32)
    return GenerateOptions(temperature=HOT, seed=seed, json_schema=schema, **more)


def follows(text: str, schema: dict[str, Any]) -> dict[str, Any]:
    answer = json.loads(text)
    jsonschema.validate(answer, schema)
    return answer


@pytest.fixture(scope="module", params=["worker", "in-process"])
def model(request: pytest.FixtureRequest, smollm2_path: Path):
    """SmolLM2 with room for two sequences, in a model worker and in this process."""
    if request.param == "in-process":
        loaded = load_llama(LoadParams(name="smollm2", path=str(smollm2_path), n_ctx=512,
                                       n_seq=2, n_threads=2))
    else:
        spec = LlamaCppSpec(backend="llamacpp", source=Source(path=str(smollm2_path)),
                            n_ctx=512)
        loaded = LlamaCppBackend().load("smollm2", spec, smollm2_path, n_threads=2, n_seq=2)
        assert loaded.pid  # a worker process holds it
    yield loaded
    loaded.unload()


def test_the_backend_declares_both() -> None:
    caps = LlamaCppBackend.capabilities
    assert caps.constrained_output and caps.embeddings


# --- structured output ------------------------------------------------------------------


def test_a_lone_answer_under_a_schema_always_parses(model) -> None:
    for seed in SEEDS:
        stream = model.chat(ASK, hot(seed))
        answer = follows(stream.text(), ROUTE)
        assert answer["specialist"] in ("math", "writing", "trivia")
        assert stream.stats is not None and stream.stats.finish_reason == "stop"


def test_batched_sequences_each_follow_their_own_schema(model) -> None:
    for seed in SEEDS:
        route, confident = batched(model, [(ASK, hot(seed)), (ASK, hot(seed + 100, CONFIDENT))])
        follows(route[0], ROUTE)
        follows(confident[0], CONFIDENT)
        assert route[1].batch_size == 2 and route[1].finish_reason == "stop"


def test_a_schema_binds_only_its_own_sequence(model) -> None:
    colours = [{"role": "user", "content": "Name three colours."}]
    route, free = batched(model, [(ASK, hot(7)), (colours, hot(7, None, stop=("\n\n",)))])
    follows(route[0], ROUTE)
    assert free[0].strip() and not free[0].lstrip().startswith("{")  # prose, not JSON


def test_the_judge_always_names_a_candidate(model) -> None:
    """The select judge's prompt and constraint: at a high temperature, over many seeds,
    its whole answer is one of the candidates' numbers."""
    candidates = ["Paris is the capital of France.", "Lyon.", "The capital is Marseille."]
    messages = agent_messages([{"role": "user", "content": "What is the capital of France?"}],
                              None, candidates, judge.template(3), 2)
    named = []
    for seed in range(12):
        text = model.chat(messages, hot(seed, judge.schema(3), max_tokens=judge.MAX_TOKENS)
                          ).text()
        answer = follows(text, judge.schema(3))
        assert judge.parse(text, 3) == answer["best"] - 1
        named.append(answer["best"])
    assert set(named) <= {1, 2, 3}


def test_stop_strings_never_cut_a_schema_answer(model) -> None:
    stops = ('"', "spec", "}")  # each would cut the JSON short
    follows(model.chat(ASK, hot(1, stop=stops)).text(), ROUTE)
    (text, _), = batched(model, [(ASK, hot(2, stop=stops))])
    follows(text, ROUTE)


def test_an_answer_cut_by_max_tokens_is_an_error_never_malformed_json(model) -> None:
    short = GenerateOptions(temperature=HOT, max_tokens=3, seed=1, json_schema=ROUTE)
    message = ("model 'smollm2': the answer reached max_tokens (3) before the JSON its "
               "schema asks for was complete; raise max_tokens")
    with pytest.raises(GenerationError) as err:
        model.chat(ASK, short).text()
    assert str(err.value) == message
    failed, = batched(model, [(ASK, short)])
    assert isinstance(failed, GenerationError) and str(failed) == message
    follows(model.chat(ASK, hot(1)).text(), ROUTE)  # the instance goes on


def test_a_schema_llama_cpp_cannot_convert_fails_only_that_call(model) -> None:
    bad = hot(1, {"type": "string", "pattern": "a+"})  # patterns must be ^...$
    with pytest.raises(GenerationError, match="^model 'smollm2': llama.cpp cannot turn this "
                       "JSON schema into a grammar .*Pattern must start with"):
        model.chat(ASK, bad).text()
    failed, fine = batched(model, [(ASK, bad), (ASK, hot(2))])
    assert isinstance(failed, GenerationError) and "cannot turn this JSON schema" in str(failed)
    follows(fine[0], ROUTE)


# --- embeddings ------------------------------------------------------------------------


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_one_normalised_vector_per_text(model) -> None:
    vectors = model.embed(TEXTS)
    assert len(vectors) == len(TEXTS)
    assert {len(v) for v in vectors} == {576}  # SmolLM2's n_embd
    for v in vectors:
        assert math.isclose(math.fsum(x * x for x in v), 1.0, rel_tol=1e-6)
    # three unrelated questions: three different directions
    assert all(cosine(vectors[i], vectors[j]) < 0.999 for i in range(3) for j in range(i))


def test_embedding_and_chatting_leave_each_other_alone(model) -> None:
    greedy = GenerateOptions(temperature=0.0, max_tokens=16, seed=1)
    before = model.embed(TEXTS)  # it leaves the KV cache empty: the chat prefills it all
    said = model.chat(ASK, greedy).text()
    assert model.embed(TEXTS) == before  # the chat changed nothing embedding reads
    assert model.chat(ASK, greedy).text() == said  # nor embedding anything a chat reads
    follows(batched(model, [(ASK, hot(3)), (ASK, hot(4))])[0][0], ROUTE)
    assert model.embed(TEXTS[:1]) == before[:1]  # one text alone: the same vector


def test_a_long_text_and_an_empty_one(model) -> None:
    long_text = "The quick brown fox jumps over the lazy dog. " * 120  # past n_ctx 512
    vectors = model.embed([long_text, ""])
    assert len(vectors) == 2 and all(len(v) == 576 for v in vectors)
    assert all(math.isclose(math.fsum(x * x for x in v), 1.0, rel_tol=1e-6) for v in vectors)


def test_worker_and_in_process_give_the_same_vectors(smollm2_path: Path) -> None:
    spec = LlamaCppSpec(backend="llamacpp", source=Source(path=str(smollm2_path)), n_ctx=512)
    remote = LlamaCppBackend().load("smollm2", spec, smollm2_path, n_threads=1)
    local = load_llama(LoadParams(name="smollm2", path=str(smollm2_path), n_ctx=512,
                                  n_threads=1))
    try:
        for a, b in zip(remote.embed(TEXTS), local.embed(TEXTS), strict=True):
            assert cosine(a, b) > 0.99999
    finally:
        remote.unload()
        local.unload()


def test_the_vectors_are_llama_cpps_own_mean_pooled(smollm2_path: Path) -> None:
    """What llama-cpp-python's embedding context gives, token vectors averaged; and what a
    context that pools by itself (mean) gives, in one decode."""
    import llama_cpp
    from llama_cpp import Llama

    ours = load_llama(LoadParams(name="smollm2", path=str(smollm2_path), n_ctx=512,
                                 n_threads=1))
    with llama_defaults(repack_allowed(), 1, "off"):  # no repacking where it crashes
        reference = Llama(model_path=str(smollm2_path), n_ctx=512, n_threads=1,
                          embedding=True, verbose=False)
        pooled = Llama(model_path=str(smollm2_path), n_ctx=512, n_threads=1, verbose=False,
                       pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN)
    pooling_model = LlamaCppModel("pooled", pooled, 0.0, n_seq=1, n_ctx_seq=512,
                                  flash_attn="auto")
    try:
        vectors = ours.embed(TEXTS)
        for text, vector, own in zip(TEXTS, vectors, pooling_model.embed(TEXTS), strict=True):
            rows = reference.embed(text)  # one row per token: SmolLM2 does not pool
            mean = [math.fsum(col) / len(rows) for col in zip(*rows, strict=True)]
            norm = math.sqrt(math.fsum(x * x for x in mean))
            # the same numbers up to the kernels' (flash attention, one decode or chunks)
            assert cosine(vector, [x / norm for x in mean]) > 0.999
            assert cosine(vector, own) > 0.999
    finally:
        ours.unload()
        reference.close()
        pooling_model.unload()


def test_a_reranker_gives_no_vector(smollm2_path: Path) -> None:
    import llama_cpp
    from llama_cpp import Llama

    with llama_defaults(repack_allowed(), 1, "off"):
        ranking = Llama(model_path=str(smollm2_path), n_ctx=256, n_threads=1, verbose=False,
                        pooling_type=llama_cpp.LLAMA_POOLING_TYPE_RANK)
    model = LlamaCppModel("ranker", ranking, 0.0, n_seq=1, n_ctx_seq=256, flash_attn="auto")
    try:
        assert model.embed(TEXTS) is None
    finally:
        model.unload()


def test_the_output_rows_of_a_chunk_stay_in_budget() -> None:
    assert chunk_tokens(49152, 576, 512) == 21  # SmolLM2: about 4 MiB of rows
    assert chunk_tokens(262144, 640, 512) == 3  # Gemma-3's vocabulary
    assert chunk_tokens(10_000_000, 4096, 512) == 1  # never none
    assert chunk_tokens(1000, 64, 8) == 8  # never past a micro-batch
    for n_vocab, n_embd in ((49152, 576), (262144, 640), (128256, 4096)):
        assert chunk_tokens(n_vocab, n_embd, 512) * 4 * (n_vocab + n_embd) <= EMBED_OUTPUT_BYTES
