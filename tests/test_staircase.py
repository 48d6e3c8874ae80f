"""Staircase aggregation: the aggregator writes its answer in rounds while the proposers
still write (engine/streaming.py's Staircase, the batch loop's Write and Turn items),
with real runs of the tiny profile (SmolLM2 from PyPI)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from localmoa.backends.base import GenerateOptions
from localmoa.backends.batch import FEED_MARK, Batch, PromptFeed, Turn, Write
from localmoa.backends.llamacpp import batch_loop, token_batch
from localmoa.backends.llamacpp.model import LoadParams, load_llama
from localmoa.backends.llamacpp.sequence_state import RESUME_TOKENS
from localmoa.cancel import Cancel
from localmoa.engine.streaming import FIRST_CHUNK_TOKENS, Staircase
from localmoa.prompts import STAIRCASE_MORE, STAIRCASE_PROMPT, streamed_messages

from .conftest import SAFETY_S, cli, decode_beside, run_json
from .serve_process import Served
from .test_run import SCHEMA, write_config
from .test_streaming import agents_of, run_of

LONG = ("Explain in detail, in at least 200 words, why the sky is blue, with examples.")


def test_rounds_read_every_live_proposers_next_chunk_then_write_as_much() -> None:
    proposers, agg = agents_of(2)
    stairs = Staircase(agg, proposers, Cancel())
    first = FIRST_CHUNK_TOKENS * 4  # characters of a chunk
    stairs.text(proposers[0], "a" * first)
    assert stairs.feed.since(0) == ([], False)  # the second has not written a chunk yet
    stairs.text(proposers[1], " " + "b" * first)
    items, _ = stairs.feed.since(0)
    assert items == [f"1. {'a' * first}\n2. {'b' * first}", Write(FIRST_CHUNK_TOKENS)]
    stairs.text(proposers[0], "c" * 2 * first)
    stairs.ended(proposers[1], run_of(proposers[1], "b" * first + " end"))
    # one proposer left: a round needs only its next chunk (twice the first)
    items, _ = stairs.feed.since(2)
    assert items == [Turn(f"{STAIRCASE_MORE}\n1 (continued): {'c' * 2 * first}"),
                     Write(2 * FIRST_CHUNK_TOKENS)]
    stairs.text(proposers[0], "dd")
    stairs.ended(proposers[0], run_of(proposers[0], "whatever"))
    items, closed = stairs.feed.since(4)
    assert closed and items == [Turn(f"{STAIRCASE_MORE}\n1 (continued, its end): dd")]
    assert stairs.order == ["L1.1", "L1.2"] and stairs.round == 2


def _staircase_on_smollm2(smollm2_path: Path, monkeypatch) -> tuple[dict[str, object],
                                                                     list[tuple[int, ...]]]:
    """A fed sequence writes 24 tokens after a first part, then reads a second part as a
    new turn and writes to its end; its result, and each answer turn's tokens as it
    opened (what it had written so far, and its prompt's last tokens then)."""
    opened: list[tuple[int, ...]] = []
    answer_turn = batch_loop._Loop._answer_turn

    def recording(self: batch_loop._Loop, state: Any) -> None:
        fresh = not state.in_answer
        answer_turn(self, state)
        if fresh:
            opened.append((len(state.written), *state.written,
                           *state.tokens[-len(state.tail) - RESUME_TOKENS:]))

    monkeypatch.setattr(batch_loop._Loop, "_answer_turn", recording)
    model = load_llama(LoadParams(name="smollm2", path=str(smollm2_path), n_ctx=1024,
                                  n_threads=2))
    batch = Batch(1, "smollm2#0")
    feed = PromptFeed()
    feed.append("1. The sky is blue because of Rayleigh scattering of sunlight.")
    feed.append(Write(24))
    first_text = threading.Event()
    result: dict[str, object] = {}

    def aggregator() -> None:
        with batch.chat(streamed_messages([{"role": "user", "content": LONG}], None,
                                          FEED_MARK, STAIRCASE_PROMPT),
                        GenerateOptions(temperature=0.0, max_tokens=64), feed=feed) as stream:
            pieces = []
            for piece in stream:
                pieces.append(piece)
                first_text.set()
            result["text"], result["stats"] = "".join(pieces), stream.stats

    def proposers() -> None:
        assert first_text.wait(SAFETY_S)  # it wrote while the proposers still wrote
        feed.append(Turn("1 (continued, its end): Shorter wavelengths scatter more."))
        feed.close()

    decode_beside(model, batch, aggregator, proposers)
    return result, opened


def test_a_staircase_sequence_writes_before_its_prompt_is_whole(smollm2_path: Path,
                                                               monkeypatch) -> None:
    result, opened = _staircase_on_smollm2(smollm2_path, monkeypatch)
    stats = result["stats"]
    assert result["text"] and stats.finish_reason in ("stop", "length")
    # it read the second part after its first 24 tokens and went on writing after it
    assert stats.completion_tokens > 24
    assert stats.prompt_tokens > 100
    # its second turn opened with the last 16 of the 24 tokens it had written: it goes on
    # from its last words (read again), not from a blank turn
    assert [t[0] for t in opened] == [0, 24]
    written = list(opened[1][1:25])
    assert list(opened[1][-RESUME_TOKENS:]) == written[-RESUME_TOKENS:]
    assert list(opened[1][-RESUME_TOKENS - 1:]) != written[-RESUME_TOKENS - 1:]


class _Logits:
    """Stands in for llama.cpp's library: a vocabulary of 6 tokens (2 and 5 end a
    generation, 4 is a control token that does not) and one logits row."""

    def __init__(self) -> None:
        self.row = [1.0] * 6

    def llama_vocab_n_tokens(self, vocab: object) -> int:
        return 6

    def llama_vocab_is_control(self, vocab: object, token: int) -> bool:
        return token in (2, 4, 5)

    def llama_vocab_is_eog(self, vocab: object, token: int) -> bool:
        return token in (2, 5)

    def llama_get_logits_ith(self, ctx: object, index: int) -> list[float]:
        assert index == 3
        return self.row


def test_a_resumed_turn_may_not_end_at_once() -> None:
    loop = batch_loop._Loop.__new__(batch_loop._Loop)
    lib = _Logits()
    loop.lib, loop.vocab, loop.ctx, loop.ends = lib, None, None, None
    loop._ban_end(3)
    inf = float("inf")
    assert lib.row == [1.0, 1.0, -inf, 1.0, 1.0, -inf]
    assert loop.ends == [2, 5]


def test_an_answer_that_ends_before_the_feed_closes_counts_what_it_read(
        smollm2_path: Path) -> None:
    """A staircase's answer can end (here its max_tokens) while the proposers still
    write: its prompt and the reference tokens it read early are still reported."""
    model = load_llama(LoadParams(name="smollm2", path=str(smollm2_path), n_ctx=1024,
                                  n_threads=2))
    batch = Batch(1, "smollm2#0")
    feed = PromptFeed()
    feed.append("1. The sky is blue because of Rayleigh scattering of sunlight, which "
                "sends the short blue wavelengths across the whole sky.")
    feed.append(Write(8))
    result: dict[str, object] = {}

    def aggregator() -> None:
        with batch.chat(streamed_messages([{"role": "user", "content": LONG}], None,
                                          FEED_MARK, STAIRCASE_PROMPT),
                        GenerateOptions(temperature=0.0, max_tokens=8), feed=feed) as stream:
            result["text"], result["stats"] = "".join(stream), stream.stats
        feed.append(Turn("1 (continued): More text that nobody reads."))  # too late
        feed.close()

    thread = threading.Thread(target=aggregator)
    thread.start()
    model.run_batch(batch, 2)
    thread.join(SAFETY_S)
    model.unload()
    stats = result["stats"]
    assert stats.finish_reason == "length" and stats.completion_tokens == 8
    assert stats.early_prompt_tokens > 20  # the first part, read before the feed closed
    assert stats.prompt_tokens > stats.early_prompt_tokens


def test_tiny_staircase_answers_before_the_last_proposer_ends() -> None:
    proc = cli("run", LONG, "--staircase", "--seed", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    jsonschema.validate(doc, SCHEMA)
    assert doc["plan"]["streaming"]["on"] and doc["answer"].strip()
    proposers, agg = doc["agents"][:3], doc["agents"][3]
    assert agg["first_text_s"] < max(p["end_s"] for p in proposers)
    assert doc["latency"]["answer_first_text_s"] == agg["first_text_s"]
    assert sorted(agg["reference_order"]) == ["L1.1", "L1.2", "L1.3"]


def test_staircase_and_another_aggregate_mode_is_one_line_exit_2() -> None:
    proc = cli("run", "hi", "--staircase", "--aggregate", "auto")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "localmoa: error: --staircase is an aggregate mode; --aggregate auto is another: "
        "give one of the two"]


def test_a_smaller_first_chunk_starts_the_rounds_sooner() -> None:
    proposers, agg = agents_of(2)
    stairs = Staircase(agg, proposers, Cancel(), first_chunk=4)
    stairs.text(proposers[0], "a" * 16)  # 4 tokens of about 4 characters
    stairs.text(proposers[1], "b" * 15)
    assert stairs.feed.since(0) == ([], False)
    stairs.text(proposers[1], "b")
    assert stairs.feed.since(0)[0] == [f"1. {'a' * 16}\n2. {'b' * 16}", Write(4)]
    stairs.text(proposers[0], "c" * 32)
    stairs.text(proposers[1], "d" * 31)
    assert stairs.feed.since(2)[0] == []  # the second round needs 8 tokens of each
    stairs.text(proposers[1], "d")
    assert stairs.feed.since(2)[0][-1] == Write(8)


def test_staircase_chunk_comes_from_the_profile_and_the_command_line(tmp_path) -> None:
    cfg = write_config(tmp_path, """\
profiles:
  stairs:
    aggregate: staircase
    staircase_chunk: 4
    layers: [[{model: smollm2-135m, max_tokens: 48}, {model: smollm2-135m, max_tokens: 48}]]
    aggregator: {model: smollm2-135m, max_tokens: 48}
""")
    proc = cli("plan", "--config", str(cfg), "--profile", "stairs", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "first chunk 4 tokens" in json.loads(proc.stdout)["plan"]["streaming"]["why"]
    doc = run_json(LONG, "--config", str(cfg), "--profile", "stairs", "--staircase-chunk",
                   "8", "--seed", "3")
    streaming = doc["plan"]["streaming"]
    assert streaming["on"] and "first chunk 8 tokens" in streaming["why"]
    proposers, agg = doc["agents"][:2], doc["agents"][2]
    assert agg["ok"] and agg["first_text_s"] < max(p["end_s"] for p in proposers)


def test_a_bad_staircase_chunk_is_one_line_exit_2(tmp_path) -> None:
    proc = cli("run", "hi", "--staircase-chunk", "0")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "--staircase-chunk" in proc.stderr
    proc = cli("run", "hi", "--staircase-chunk", "8", "--aggregate", "never")
    assert proc.returncode == 2
    assert "--aggregate never is another" in proc.stderr
    cfg = write_config(tmp_path, """\
profiles:
  stairs:
    aggregate: staircase
    staircase_chunk: 0
    layers: [[{model: smollm2-135m}]]
    aggregator: {model: smollm2-135m}
""")
    proc = cli("plan", "--config", str(cfg), "--profile", "stairs")
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "staircase_chunk" in proc.stderr


def test_a_proposer_that_ends_before_the_first_round_is_read_at_once() -> None:
    proposers, agg = agents_of(3)
    stairs = Staircase(agg, proposers, Cancel(), first_chunk=4)
    stairs.text(proposers[1], " Nine.")
    stairs.ended(proposers[1], run_of(proposers[1], "Nine."))
    assert stairs.feed.since(0)[0] == ["2. Nine."]  # not held for the first round
    stairs.text(proposers[0], "a" * 16)
    stairs.text(proposers[2], "c" * 16)
    items, _ = stairs.feed.since(1)
    assert items == [f"\n1. {'a' * 16}\n3. {'c' * 16}", Write(4)]
    assert stairs.order == ["L1.2", "L1.1", "L1.3"]


def test_a_followers_head_rides_along_the_proposers_steps(smollm2_path: Path,
                                                         monkeypatch) -> None:
    """The aggregator's head (its long prompt, known from the start) waits for the
    proposer's prompt, then is read at most HEAD_STEP_TOKENS a step: the proposer samples
    its first token after a step of its own prompt, instead of waiting for the whole
    head, and writes on while the head is read."""
    steps: list[dict[int, int]] = []
    add, decode = token_batch.TokenBatch.add, token_batch.TokenBatch.decode
    rows: dict[int, int] = {}

    def counting_add(self: Any, token: int, pos: int, seq_ids: list[int], logits: bool) -> int:
        if len(seq_ids) == 1:  # (a shared prefix's row belongs to every sequence)
            rows[seq_ids[0]] = rows.get(seq_ids[0], 0) + 1
        return add(self, token, pos, seq_ids, logits)

    def counting_decode(self: Any, ctx: Any) -> None:
        steps.append(dict(rows))
        rows.clear()
        decode(self, ctx)

    monkeypatch.setattr(token_batch.TokenBatch, "add", counting_add)
    monkeypatch.setattr(token_batch.TokenBatch, "decode", counting_decode)
    model = load_llama(LoadParams(name="smollm2", path=str(smollm2_path), n_ctx=1024,
                                  n_seq=2, n_threads=2))
    batch = Batch(2, "smollm2#0")
    feed = PromptFeed()
    result: dict[str, Any] = {}

    def proposer() -> None:
        with batch.chat([{"role": "user", "content": "Why is the sky blue?"}],
                        GenerateOptions(temperature=0.0, max_tokens=24), place=0) as stream:
            answer = "".join(stream)
        feed.append("1. " + answer)
        feed.close()

    def aggregator() -> None:
        with batch.chat(streamed_messages([{"role": "user", "content": LONG}], None,
                                          FEED_MARK, STAIRCASE_PROMPT),
                        GenerateOptions(temperature=0.0, max_tokens=4), feed=feed,
                        place=1) as stream:
            result["text"], result["stats"] = "".join(stream), stream.stats

    decode_beside(model, batch, proposer, aggregator)
    assert result["text"] and result["stats"].prompt_tokens > 150
    first = steps[1] if len(steps[0]) == 0 else steps[0]  # after a shared prefix's step
    proposer_id, follower_id = 0, 1
    assert first[proposer_id] > 5  # the proposer's prompt, whole, in the first step
    assert follower_id not in first  # alone
    # then the proposer writes a token a step while the head goes on in pieces
    riding = [s for s in steps[steps.index(first) + 1:]
              if s.get(proposer_id) == 1 and s.get(follower_id, 0) > 0]
    assert len(riding) >= 3
    assert all(s[follower_id] <= batch_loop.HEAD_STEP_TOKENS for s in riding)


HELD = ("The sky looks blue because the air scatters the short blue wavelengths of "
        "sunlight much more than the long red ones.")


def _content(line: str, path: str) -> str | None:
    """A streamed line's answer text ("" for none), or None at the stream's end."""
    if path == "/api/chat":
        doc = json.loads(line)
        return None if doc.get("done") else doc["message"]["content"]
    if not line.startswith("data: "):
        return ""
    if line == "data: [DONE]":
        return None
    choices = json.loads(line[6:])["choices"]
    return (choices[0]["delta"].get("content") or "") if choices else ""


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
def test_serve_streams_the_staircase_answer_while_its_proposer_still_writes(
        tmp_path: Path, path: str) -> None:
    """`serve`'s OpenAI and Ollama streams carry the staircase's first words while its
    proposer (the hold backend: it writes HELD, then holds its answer open until the
    test releases it) has not ended: without them, the test would wait forever (its
    safety net fails it)."""
    release = tmp_path / "release"
    config = tmp_path / "stair.yaml"
    config.write_text(
        "models:\n"
        f"  held: {{backend: hold, release: {str(release)!r}, text: {HELD!r}}}\n"
        "profiles:\n"
        "  stair:\n"
        "    aggregate: staircase\n"
        "    layers:\n"
        "      - - {model: held}\n"
        "    aggregator: {model: smollm2-135m, temperature: 0, max_tokens: 24}\n",
        encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALMOA_")}
    with Served("--config", str(config), env=env, hold=True) as served:
        body = {"model": "moa:stair", "stream": True,
                "messages": [{"role": "user", "content": "Why is the sky blue?"}]}
        with httpx.stream("POST", served.url + path, json=body, timeout=SAFETY_S) as response:
            assert response.status_code == 200, response.read()
            lines = response.iter_lines()
            early = ""
            for line in lines:
                early += _content(line, path) or ""
                if early.strip():
                    break  # words of the answer, and the proposer is still held
            assert early.strip()
            release.touch()
            rest = [_content(line, path) for line in lines if line]
    assert rest[-1] is None  # then it wrote to its end
