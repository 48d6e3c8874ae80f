"""Continuous batching with a real llama.cpp model (SmolLM2-135M from PyPI): a sequence
whose prompt streams in (reference streaming) evaluates each piece as it comes while
another sequence writes, and starts writing once its feed closes; a sequence can join a
batch that is already decoding and reuses the prefix another one evaluated."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from localmoa.backends.base import GenerateOptions
from localmoa.backends.batch import FEED_MARK, Batch, PromptFeed, fed_messages
from localmoa.backends.llamacpp.backend import LlamaCppBackend
from localmoa.backends.llamacpp.chat_prompt import chat_prompt, split_prompt
from localmoa.backends.llamacpp.model import LoadParams, load_llama
from localmoa.backends.llamacpp.spec import LlamaCppSpec, Source
from localmoa.prompts import AGGREGATE_PROMPT, agent_messages, streamed_messages, streamed_reference

from .conftest import SAFETY_S, decode_beside

QUESTION = [{"role": "user", "content": "Which is larger, 9.11 or 9.9?"}]
REFERENCES = ["9.9 is larger: 0.9 is more than 0.11.", "9.11 is larger, it has more digits.",
              "Compare the decimals: 9.90 > 9.11, so 9.9."]


@pytest.fixture(scope="module", params=["worker", "in-process"])
def model(request: pytest.FixtureRequest, smollm2_path: Path):
    if request.param == "in-process":
        loaded = load_llama(LoadParams(name="smollm2", path=str(smollm2_path), n_ctx=1024,
                                       n_seq=2, n_threads=2))
    else:
        spec = LlamaCppSpec(backend="llamacpp", source=Source(path=str(smollm2_path)),
                            n_ctx=1024)
        loaded = LlamaCppBackend().load("smollm2", spec, smollm2_path, n_threads=2, n_seq=2)
    yield loaded
    loaded.unload()


def read(stream, first: threading.Event | None = None) -> tuple[str, object]:
    pieces = []
    for piece in stream:
        pieces.append(piece)
        if first is not None:
            first.set()
    return "".join(pieces), stream.stats


def test_streamed_messages_hold_the_references_at_one_place_near_the_end() -> None:
    messages = streamed_messages([{"role": "system", "content": "Be brief."}, *QUESTION],
                                 "You aggregate.", FEED_MARK)
    assert messages[0] == {"role": "system", "content": "Be brief.\n\nYou aggregate."}
    pieces = [streamed_reference(i, r) for i, r in enumerate(REFERENCES, start=1)]
    whole = fed_messages(messages, "".join(pieces))[-1]["content"]
    numbered = "\n".join(f"{i}. {r}" for i, r in enumerate(REFERENCES, start=1))
    assert whole == f"{QUESTION[0]['content']}\n\n{AGGREGATE_PROMPT}\n{numbered}"
    assert messages[-1]["content"].endswith(FEED_MARK)  # nothing of the user's after it


def test_the_chat_template_leaves_only_the_turn_end_after_the_mark(model, smollm2_path) -> None:
    llm = load_llama(LoadParams(name="smollm2", path=str(smollm2_path), n_ctx=256)).llm
    messages = streamed_messages(QUESTION, None, FEED_MARK)
    split = split_prompt(llm, messages)
    assert split is not None
    head, tail, _ = split
    assert 0 < len(tail) <= 8  # "<|im_end|>\n<|im_start|>assistant\n"
    whole, _ = chat_prompt(llm, fed_messages(messages, ""))
    assert head + tail == whole


def test_a_fed_sequence_reads_its_references_as_they_come_and_then_writes(model) -> None:
    batch = Batch(2, "smollm2#0")
    feed = PromptFeed()
    feed.append(streamed_reference(1, REFERENCES[0]))  # the first proposer is done
    results: dict[int, tuple[str, object]] = {}
    writer_done = threading.Event()

    def writer() -> None:
        with batch.chat(agent_messages(QUESTION, "You are a teacher.", None),
                        GenerateOptions(temperature=0.0, max_tokens=40)) as stream:
            results[0] = read(stream)
        writer_done.set()

    def aggregator() -> None:
        with batch.chat(streamed_messages(QUESTION, None, FEED_MARK),
                        GenerateOptions(temperature=0.0, max_tokens=24), feed=feed) as stream:
            results[1] = read(stream)

    def proposers() -> None:  # the others end when the writer does
        assert writer_done.wait(SAFETY_S)
        feed.close(streamed_reference(2, REFERENCES[1]) + streamed_reference(3, REFERENCES[2]))

    decode_beside(model, batch, writer, aggregator, proposers, unload=False)
    text, stats = results[1]
    assert text and stats.finish_reason in ("stop", "length")
    # the first reference was evaluated while the writer wrote; the rest after
    assert stats.early_prompt_tokens >= 10
    assert stats.prompt_tokens > stats.early_prompt_tokens + 30
    assert results[0][0] and results[0][1].completion_tokens > 0


def test_a_fed_sequence_whose_agent_stops_while_it_waits_leaves(model) -> None:
    batch = Batch(1, "smollm2#0")
    stop = threading.Event()
    stream = batch.chat(streamed_messages(QUESTION, None, FEED_MARK),
                        GenerateOptions(temperature=0.0, max_tokens=24), stop.is_set,
                        feed=PromptFeed())
    driver = threading.Thread(target=model.run_batch, args=(batch, 2))
    driver.start()
    stop.set()  # its feed never closes: only the stop ends it
    driver.join(SAFETY_S)
    assert not driver.is_alive()
    assert stream.text() == "" and stream.stats.finish_reason == "cancelled"


def test_a_sequence_joins_a_running_batch_and_reuses_its_prefix(smollm2_path: Path) -> None:
    model = load_llama(LoadParams(name="smollm2", path=str(smollm2_path), n_ctx=1024,
                                  n_seq=2, n_threads=2))
    batch = Batch(1, "smollm2#0", joinable=True)
    messages = agent_messages(QUESTION, "You are a careful assistant.", None)
    first_text = threading.Event()
    results: dict[int, tuple[str, object]] = {}

    def first() -> None:
        with batch.chat(messages, GenerateOptions(temperature=0.0, max_tokens=48)) as stream:
            results[0] = read(stream, first_text)

    def late() -> None:
        assert first_text.wait(SAFETY_S)  # the batch is decoding
        stream = batch.chat(messages, GenerateOptions(temperature=0.0, max_tokens=16))
        batch.seal()
        with stream:
            results[1] = read(stream)

    decode_beside(model, batch, first, late)
    text, stats = results[1]
    assert text and stats.completion_tokens > 0
    assert stats.shared_tokens == stats.prompt_tokens - 1  # all but its last position
    assert results[0][1].completion_tokens > 0


def test_a_fed_sequence_whose_template_fails_fails_alone(
        smollm2_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from localmoa.backends.llamacpp import sequence_state

    def broken(*_: object) -> None:
        raise ValueError("the template raised")

    monkeypatch.setattr(sequence_state, "split_prompt", broken)
    model = load_llama(LoadParams(name="smollm2", path=str(smollm2_path), n_ctx=512, n_seq=2,
                                  n_threads=2))
    batch = Batch(2, "smollm2#0")
    results: dict[int, object] = {}

    def member(i: int, messages: list, feed: PromptFeed | None) -> None:
        try:
            with batch.chat(messages, GenerateOptions(temperature=0.0, max_tokens=8),
                            feed=feed) as stream:
                results[i] = stream.text()
        except Exception as exc:  # noqa: BLE001 - what the member got is the result
            results[i] = exc

    feed = PromptFeed()
    feed.close("1. an answer")
    threads = [threading.Thread(target=member, args=(0, agent_messages(QUESTION, None, None),
                                                     None)),
               threading.Thread(target=member, args=(1, streamed_messages(QUESTION, None,
                                                                          FEED_MARK), feed))]
    for thread in threads:
        thread.start()
    model.run_batch(batch, 2)
    for thread in threads:
        thread.join(SAFETY_S)
    model.unload()
    assert isinstance(results[0], str) and results[0]  # the other sequence answered
    assert "its chat template failed on this prompt: the template raised" in str(results[1])


def test_streamed_text_reads_as_the_same_tokens_however_it_is_cut(smollm2_path: Path,
                                                                 monkeypatch) -> None:
    """Streamed text comes in pieces that depend on timing (a worker's replies, held-back
    stop strings); tokenized piece by piece, "9" + ".9" would read otherwise than
    "9.9". The prompt's tokens are the same for any cut."""
    from localmoa.backends.llamacpp import batch_loop

    prompts: list[list[int]] = []
    close_feed = batch_loop._Loop._close_feed

    def recording(self: batch_loop._Loop, state: object) -> None:
        close_feed(self, state)
        prompts.append(list(state.tokens))  # type: ignore[attr-defined]

    monkeypatch.setattr(batch_loop._Loop, "_close_feed", recording)
    model = load_llama(LoadParams(name="smollm2", path=str(smollm2_path), n_ctx=1024,
                                  n_threads=2))
    text = streamed_reference(1, "Nine point nine: 9.9 is larger than 9.11, as 0.90 > 0.11.")
    for pieces in ([text], [text[i:i + 3] for i in range(0, len(text), 3)]):
        batch = Batch(1, "smollm2#0")
        feed = PromptFeed()
        for piece in pieces:
            feed.append(piece)
        feed.close()
        with batch.chat(streamed_messages(QUESTION, None, FEED_MARK),
                        GenerateOptions(temperature=0.0, max_tokens=2), feed=feed) as stream:
            thread = threading.Thread(target=model.run_batch, args=(batch, 2))
            thread.start()
            read(stream)
            thread.join(SAFETY_S)
    model.unload()
    assert len(prompts) == 2 and prompts[0] == prompts[1]


class _Vocab:
    """Stands in for a tokenizer: pieces of ``pattern`` (each its own id), after a space
    put before every text (``prefix``: SentencePiece's) and spaces written as "▁"."""

    def __init__(self, pattern: str, prefix: bool) -> None:
        self.pattern, self.prefix, self.ids = pattern, prefix, {}

    def tokenize(self, data: bytes, add_bos: bool = False, special: bool = False) -> list[int]:
        import re

        text = data.decode("utf-8")
        text = ("▁" + text.replace(" ", "▁")) if self.prefix else text
        return [self.ids.setdefault(p, len(self.ids)) for p in re.findall(self.pattern, text)]


@pytest.mark.parametrize(("pattern", "prefix", "text"), [
    ("▁*[^▁]+|▁+$", True, "one two three four"),  # SentencePiece with its space prefix
    (r" [^\w\s] |\w+| \w+|\s+|[^\w\s]", False, "9.90 > 0.11 so x > y"),  # " > " one piece
    (r"\w+| \w+|\s+|[^\w\s]", False, "天空是蓝色的。因为空气散射"),  # no spaces
])
def test_held_text_is_cut_only_where_the_tokenizer_agrees(pattern: str, prefix: bool,
                                                          text: str) -> None:
    from localmoa.backends.llamacpp.feed_text import FeedText

    feed = FeedText(_Vocab(pattern, prefix))
    cut = feed.cut(text)
    assert 0 < cut < len(text)
    assert feed.tokens(text[:cut]) + feed.tokens(text[cut:]) == feed.tokens(text)
    assert feed.space_prefix is prefix
