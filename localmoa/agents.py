"""One agent's call: messages (references fitted to the context), streaming, stats.

Cancellation is cooperative: between two pieces of text the agent reads its Cancel
(cancel.py: the run stopping on Ctrl-C or SIGTERM, its request's client gone, or its own
time up) and stops there, keeping what it produced.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import traceback
from collections.abc import Callable, Sequence

from . import constants
from .backends.base import ChatStream, GenerateOptions, GenerationStats, LoadedModel, Message
from .backends.batch import FEED_MARK, SequenceStream
from .cancel import Control, Stopped
from .config import ModelSpec
from .errors import LocalMoaError
from .metrics import AgentRun
from .prompts import agent_messages, fit_references, reference_slots, streamed_messages
from .recipe import Agent

#: Tokens kept free for the chat template's own markup around the messages.
TEMPLATE_MARGIN_TOKENS = 48


def token_counter(model: LoadedModel) -> tuple[Callable[[str], int], Callable[[str, int], str]]:
    """Count and cut text in the model's own tokens; ~3 characters a token where the
    model cannot tokenize (its count_tokens / cut_tokens say None)."""
    def count(text: str) -> int:
        tokens = model.count_tokens(text)
        return len(text) // 3 + 1 if tokens is None else tokens

    def cut(text: str, n: int) -> str:
        kept = model.cut_tokens(text, n)
        return text[: n * 3] if kept is None else kept

    return count, cut


def fitted_messages(agent: Agent, spec: ModelSpec, model: LoadedModel,
                    conversation: Sequence[Message], references: list[str] | None,
                    run: AgentRun) -> list[Message]:
    """The agent's messages (its prompt template, if any, rendered); references shortened
    fairly when they would overflow n_ctx. Everything else (the template's own text, the
    query, the personas) counts as fixed; a template that places the references k times
    leaves each place 1/k of what is left."""
    template, layer = agent.prompt_template, agent.layer
    messages = agent_messages(conversation, agent.system, references, template, layer)
    slots = 1 if template is None else reference_slots(template)
    if not references or slots == 0:
        return messages
    count, cut = token_counter(model)
    limit = spec.n_ctx - agent.max_tokens - TEMPLATE_MARGIN_TOKENS
    refs_tokens = sum(count(r) for r in references)
    others = sum(count(m["content"]) for m in messages) - slots * refs_tokens
    budget = (limit - others) // slots
    if refs_tokens <= budget:
        return messages
    kept, before, after = fit_references(references, max(0, budget), count, cut)
    run.references_trimmed = {"references": len(references), "tokens_before": before,
                              "tokens_after": after, "n_ctx": spec.n_ctx}
    return agent_messages(conversation, agent.system, kept, template, layer)


def run_agent(agent: Agent, model: LoadedModel, spec: ModelSpec, task_threads: int,
              conversation: Sequence[Message], references: list[str] | None,
              control: Control, run: AgentRun, t0: float,
              on_start: Callable[[Agent], None] | None,
              on_text: Callable[[Agent, str], None] | None,
              streamed: str | None = None) -> AgentRun:
    """Run one agent to completion, failure or stop; ``run`` is filled in and returned.

    Failures a user can meet (LocalMoaError: the backend's errors, a stop) become the
    agent's error. Anything else is a bug, in localmoa or a backend: the agent fails
    with "internal error", and with LOCALMOA_DEBUG=1 its traceback goes to stderr.
    The callbacks must not raise (the engine guards them). ``streamed``: its references
    stream in through its model (a batch member with a PromptFeed): its messages hold
    this instruction and the feed's mark where they go (prompts.streamed_messages).
    """
    if on_start:
        on_start(agent)
    run.start_s = time.perf_counter() - t0
    pieces: list[str] = []
    stream: ChatStream | None = None
    cancel = control.agent(agent)  # the run's, its request's and its own stop, in one
    try:
        messages = (streamed_messages(conversation, agent.system, FEED_MARK, streamed)
                    if streamed is not None
                    else fitted_messages(agent, spec, model, conversation, references, run))
        options = GenerateOptions(temperature=agent.temperature, top_p=agent.top_p,
                                  max_tokens=agent.max_tokens, seed=agent.seed,
                                  n_threads=task_threads or None, stop=agent.stop,
                                  json_schema=json.loads(agent.json_schema)
                                  if agent.json_schema else None)
        cancel.check()
        stream = model.chat(messages, options)
        for piece in stream:
            cancel.check()
            if run.first_text_s is None and piece:
                run.first_text_s = round(time.perf_counter() - t0, 4)
            pieces.append(piece)
            if on_text:
                on_text(agent, piece)
        stats = stream.stats
        if stats is not None and stats.finish_reason == "cancelled":
            cancel.check()  # its batch dropped it because it had to stop
            raise Stopped("stopped")
        if stats is not None:
            record_stats(run, stats)
        run.answer = "".join(pieces).strip()
        run.ok = bool(run.answer)
        if not run.ok:
            run.error = "empty answer"
    except (LocalMoaError, Stopped) as exc:
        run.answer = "".join(pieces).strip()  # what it produced is kept
        run.error = str(exc) or type(exc).__name__
    except Exception as exc:  # noqa: BLE001 - a bug costs this agent, not the run
        run.answer = "".join(pieces).strip()
        run.error = internal_error(exc, f"agent {agent.id} ({agent.model})")
    finally:
        if stream is not None:
            stream.close()  # a stopped stream frees its instance now, not at the next GC
    if stream is not None:
        _count_what_was_cut_short(run, stream, model, "".join(pieces))
    run.end_s = round(time.perf_counter() - t0, 4)
    run.start_s = round(run.start_s, 4)
    return run


def record_stats(run: AgentRun, stats: GenerationStats) -> None:
    """What the call cost, from the backend's stats."""
    run.prompt_tokens = stats.prompt_tokens
    run.completion_tokens = stats.completion_tokens
    run.ttft_s = round(stats.ttft_s, 4)
    run.prompt_tok_per_s = round(stats.prompt_tok_per_s, 2)
    run.decode_tok_per_s = round(stats.decode_tok_per_s, 2)
    run.finish_reason = stats.finish_reason
    run.batch = stats.batch_size
    run.shared_prompt_tokens = stats.shared_tokens
    run.timing = stats.timing
    run.early_prompt_tokens = stats.early_prompt_tokens


def _count_what_was_cut_short(run: AgentRun, stream: ChatStream, model: LoadedModel,
                              text: str) -> None:
    """Restarts of its batch's worker; and, for an agent stopped or failed before its
    stats came (Ctrl-C, a timeout, a crash), the tokens it produced: its batch
    sequence's count, else its text counted by the model's tokenizer (nothing where
    the model has none, or its worker is gone)."""
    if isinstance(stream, SequenceStream):
        run.worker_restarts = stream.restarts
    if run.ok or run.completion_tokens or not text:
        return
    if isinstance(stream, SequenceStream):
        run.completion_tokens = stream.tokens_written
        return
    with contextlib.suppress(Exception):  # its worker died, or the model cannot count
        run.completion_tokens = model.count_tokens(text) or 0


def internal_error(exc: BaseException, where: str) -> str:
    """The one-line message of an unexpected exception; its traceback on stderr with
    LOCALMOA_DEBUG=1."""
    if constants.debug():
        trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        sys.stderr.write(f"localmoa: {where} raised:\n{trace}")
        sys.stderr.flush()
    return (f"internal error: {type(exc).__name__}: {exc} (run again with LOCALMOA_DEBUG=1 "
            "for the traceback, and report it)")
