"""A batch decoded in a model worker, localmoa's side, and the worker's one restart.

``relay_batch`` sends the batch's sequences to the worker, relays each one's text
and end to its agent's stream, and cancels those whose agent stopped (a worker
deaf to a cancel is killed).

When the worker dies during the batch on its own (a native crash, the OOM killer,
a kill from outside; not localmoa ending it for a cancel it ignored, an abandoned
agent, an unload or an interrupt), a fresh worker loads the same ``LoadParams``
and every unfinished sequence resumes from its prompt plus the text it had
written (worker_main's ``resume_text``): its agent's stream goes on with nothing
lost or repeated, its token budget and stop strings still apply. The dead
worker's memory went with it, so the fresh one is the instance the plan counted:
same key, same footprint, within the budget. A second death fails the sequences
with the death's one line, as a first one did before.
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import time
from typing import Any, Protocol

from ...errors import GenerationError, ModelLoadError
from ..base import GenerationStats
from ..batch import Batch, Sequence, fed_messages
from .model import LoadParams
from .worker_process import DeafWatch, WorkerProcess

#: Times a batch's worker that died on its own is replaced; the next death fails it.
MAX_RESTARTS = 1
#: How often the driver looks for agents that must stop.
_POLL_S = 0.05


class WorkerModel(Protocol):
    """What a batch needs of the model whose worker decodes it (worker.WorkerModel)."""

    name: str
    #: What a fresh worker loads if this one dies mid-batch.
    params: LoadParams

    @property
    def process(self) -> WorkerProcess: ...

    def may_restart(self) -> bool: ...

    def adopt(self, process: WorkerProcess) -> bool: ...

    def stop_request(self, rid: int, replies: queue.SimpleQueue[tuple[Any, ...]],
                     last: str) -> None: ...


def relay_batch(model: WorkerModel, batch: Batch, seqs: list[Sequence], n_threads: int,
                cancel_grace_s: float) -> None:
    """Decode ``seqs`` (``batch``'s) in ``model``'s worker until each has ended; restart
    the worker once if it dies on its own. A worker that has not let a cancelled
    sequence go after ``cancel_grace_s`` is killed. Raises GenerationError when it
    cannot go on (the engine fails the sequences left with that line)."""
    pending, restarts = seqs, 0
    while pending:
        death = _relay(model, batch, pending, n_threads, cancel_grace_s)
        if death is None:
            return
        unfinished = [seq for seq in seqs if not seq.done]
        if not unfinished:
            return
        if restarts >= MAX_RESTARTS or not model.may_restart():
            raise GenerationError(death)
        restarts += 1
        pending = _restart(model, batch, unfinished, death)


def _relay(model: WorkerModel, batch: Batch, seqs: list[Sequence], n_threads: int,
           cancel_grace_s: float) -> str | None:
    """One batch request to the current worker: None when it ended, the one line of
    its death when it died."""
    process = model.process
    fed = [s for s in seqs if s.feed is not None and not s.resume_text]
    rid, replies = process.request("batch", [_sent(s) for s in seqs], n_threads)
    for seq in fed:  # its feed's text goes to the worker as it comes
        assert seq.feed is not None
        seq.feed.listen(lambda: replies.put(("feed_ready",)))
    sent = {s.index: 0 for s in fed}
    batch.on_threads(lambda n: process.send(("threads", rid, n)))
    if batch.threads:
        process.send(("threads", rid, batch.threads))
    process.phase = "prefill"
    by_index = {s.index: s for s in seqs}
    asked: dict[int, DeafWatch] = {}  # sequence -> since its cancel was sent
    ended = False
    try:
        while True:
            _send_feeds(process, rid, fed, sent)
            with contextlib.suppress(queue.Empty):
                reply = replies.get(timeout=_POLL_S)
                if reply[0] != "feed_ready" and _deliver(process, by_index, reply):
                    ended = True
                    if reply[0] == "batch_end":
                        return None
                    if reply[0] == "dead":
                        return str(reply[2])
                    raise GenerationError(str(reply[2]))  # the engine fails those left
            _cancel_stopped(process, rid, seqs, asked, cancel_grace_s)
    finally:
        if not ended:
            model.stop_request(rid, replies, "batch_end")
        process.forget(rid)
        process.phase = "idle"


def _sent(seq: Sequence) -> tuple[Any, ...]:
    """A sequence as the worker's batch request has it. One resumed after a restart had
    its whole prompt: it goes with the feed's text in place (no feed)."""
    messages, fed = seq.messages, seq.feed is not None
    if fed and seq.resume_text:
        assert seq.feed is not None
        messages, fed = fed_messages(seq.messages, seq.feed.text()), False
    return (seq.index, messages, seq.options, seq.resume_text, seq.resume_tokens, fed)


def _send_feeds(process: WorkerProcess, rid: int, fed: list[Sequence],
                sent: dict[int, int]) -> None:
    """The feed text each fed sequence got since it was last sent, and its close."""
    for seq in fed:
        if sent[seq.index] < 0:
            continue  # closed and sent
        assert seq.feed is not None
        pieces, closed = seq.feed.since(sent[seq.index])
        if pieces or closed:
            process.send(("feed", rid, seq.index, pieces, closed))
            sent[seq.index] = -1 if closed else sent[seq.index] + len(pieces)


def _deliver(process: WorkerProcess, by_index: dict[int, Sequence],
             reply: tuple[Any, ...]) -> bool:
    """Hand one reply to its sequence; True when it ends the request."""
    kind = reply[0]
    if kind == "text":
        process.phase = "decode"
        seq = by_index[reply[2]]
        seq.sampled = reply[4]  # the worker's count: what this text cost
        seq.write(reply[3])
    elif kind == "end":
        seq = by_index[reply[2]]
        seq.end(resumed_stats(seq, reply[3]) if seq.restarts else reply[3])
    elif kind == "fail":
        by_index[reply[2]].fail(reply[3])
    else:  # batch_end, error or dead
        return True
    return False


def _cancel_stopped(process: WorkerProcess, rid: int, seqs: list[Sequence],
                    asked: dict[int, DeafWatch], grace_s: float) -> None:
    """An agent that stopped leaves at the worker's next step; a worker that has not
    let it go is killed once DeafWatch finds it deaf (stopped or stuck)."""
    for seq in seqs:
        if seq.done:
            continue
        if seq.index not in asked:
            if seq.wants_stop():
                asked[seq.index] = DeafWatch(process, grace_s)
                process.send(("cancel", rid, seq.index))
        elif asked[seq.index].deaf():
            process.kill(f"it did not stop within {grace_s:g} s of a cancel "
                         "(stopped or stuck)")


def _restart(model: WorkerModel, batch: Batch, unfinished: list[Sequence],
             death: str) -> list[Sequence]:
    """A fresh worker for ``model``; the sequences that go on in it, each set to resume
    after the text it wrote. Sequences whose agent stopped meanwhile end here."""
    left = []
    for seq in unfinished:
        if seq.wants_stop():
            seq.finish("cancelled", seq.written_tokens)
        elif 0 < seq.options.max_tokens <= seq.written_tokens:  # it had used its budget
            seq.finish("length", seq.written_tokens)
        else:
            left.append(seq)
    if not left:
        return []
    process = _fresh_worker(model, left, death)
    if process is None:  # every agent left stopped while it loaded
        for seq in left:
            seq.finish("cancelled", seq.written_tokens)
        return []
    for seq in left:
        seq.resume_text = "".join(seq.written)
        seq.resume_tokens = seq.written_tokens
        seq.restarts += 1
    batch.restarted(process.pid, death, len(left))
    return left


def _fresh_worker(model: WorkerModel, seqs: list[Sequence],
                  death: str) -> WorkerProcess | None:
    """A new worker process with ``model``'s LoadParams loaded, in the dead one's place;
    None when every one of ``seqs`` must stop before it is ready."""
    try:
        process = WorkerProcess()
    except ModelLoadError as exc:
        raise GenerationError(f"{death}; restarting its worker failed: {exc}") from None
    process.label = model.name
    process.restarted = True
    if not model.adopt(process):  # its agents were abandoned meanwhile
        process.kill("its model was unloaded while its worker restarted")
        raise GenerationError(death)
    process.phase = "load"
    rid, replies = process.request("load", model.params)
    try:
        while True:
            with contextlib.suppress(queue.Empty):
                reply = replies.get(timeout=_POLL_S)
                break
            if all(seq.wants_stop() for seq in seqs):
                process.kill("its batch was stopped while it restarted")
                return None
    finally:
        process.forget(rid)
    if reply[0] != "loaded":
        raise GenerationError(f"{death}; restarting its worker failed: {reply[2]}")
    process.phase = "idle"
    return process


def resumed_stats(seq: Sequence, stats: GenerationStats) -> GenerationStats:
    """The stats of a sequence that went on in a fresh worker: its count of tokens is the
    worker's (it went on from the tokens produced before), its times are the whole
    call's, as localmoa saw it (the restart included)."""
    now = time.perf_counter()
    first = seq.first_text_at or now
    ttft = first - seq.joined_at
    return dataclasses.replace(stats, ttft_s=ttft, prompt_s=ttft, decode_s=max(0.0, now - first),
                               decode_tokens=max(0, stats.completion_tokens - 1))
