"""A model worker: one llama.cpp model in a process of its own.

Started by backends/llamacpp/worker.py as ``python -m localmoa.backends.llamacpp.worker_main FD``,
where FD is its end of a Unix socket pair. It imports llama.cpp, says
``ready``, then serves its parent over the socket, one pickled tuple per
message (``multiprocessing.connection`` framing):

    parent -> worker                              worker -> parent
    ("load", rid, LoadParams)                     ("loaded", rid, load_s, facts)
    ("chat", rid, messages, options)              ("text", rid, piece) ... ("end", rid, stats)
    ("batch", rid, [(i, messages, options,        ("text", rid, i, piece, tokens) ...
                    resume_text, resume_tokens,   ("end", rid, i, stats)
                    fed)], n)                     ("fail", rid, i, message), ("batch_end", rid)
    ("feed", rid, i, [pieces], closed)            (sequence i's prompt grows; see batch.py)
    ("threads", rid, n)                           (the batch decodes with n threads from now)
    ("cancel", rid, i | None)                     (the chat or sequence ends as "cancelled")
    ("count", rid, text), ("cut", rid, text, n)   ("value", rid, value)
    ("embed", rid, texts)                         ("value", rid, vectors | None)
    ("exit",)                                     (it exits at once)
                                                  ("error", rid, message) for any request

A batch's ``tokens`` are those sampled for the sequence so far (its text, if the
worker died now, cost that many); ``resume_text`` is what a sequence wrote before
its previous worker died: it goes on from there (``resume_tokens`` already spent).

Loads, chats, batches and embeddings run one at a time on the main thread (they
use the context); a reader thread takes cancels and tokenizer calls meanwhile
(llama.cpp's tokenizer only reads the vocabulary). Per-agent timings are taken
here, where they are exact.

The worker ignores SIGINT and SIGTERM: a Ctrl-C in the terminal, or a SIGTERM sent
to the whole process group (a service manager stopping localmoa), reaches it too,
and it is localmoa that decides what stops (a chat keeps its models; an agent
interrupted keeps what it wrote). localmoa ends a worker with ``exit`` or SIGKILL,
never SIGTERM. When its parent dies, even by SIGKILL, its socket reads end of
file and the worker exits at once.
"""

from __future__ import annotations

import functools
import os
import queue
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

from ...errors import LocalMoaError
from ..base import GenerateOptions, GenerationStats, Message
from ..batch import PromptFeed
from ..batch import Sequence as BatchSequence


class _RemoteSequence(BatchSequence):
    """A sequence decoded here whose text and end go to the parent."""

    def __init__(self, server: _Server, rid: int, index: int, messages: Sequence[Message],
                 options: GenerateOptions, resume: tuple[str, int], fed: bool) -> None:
        super().__init__(index, messages, options,
                         lambda: server.is_cancelled(rid, index),
                         server.feed(rid, index) if fed else None)
        self.server = server
        self.rid = rid
        self.resume_text, self.resume_tokens = resume
        self.sampled = self.resume_tokens  # its count goes on from there

    def write(self, text: str) -> None:
        if text and not self.done:
            if self.first_text_at is None:
                self.first_text_at = time.perf_counter()
            self.server.send(("text", self.rid, self.index, text, self.sampled))

    def end(self, stats: GenerationStats) -> None:
        if not self.done:
            super().end(stats)
            self.server.send(("end", self.rid, self.index, stats))

    def fail(self, message: str) -> None:
        if not self.done:
            super().fail(message)
            self.server.send(("fail", self.rid, self.index, message))


class _Server:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.model: Any = None
        self.jobs: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._send_lock = threading.Lock()
        self._cancel_lock = threading.Lock()  # the reader adds, the main thread forgets
        self._cancelled: set[tuple[int, int | None]] = set()
        #: Fed sequences' feeds, made by whichever comes first: the batch, or its text.
        self._feeds: dict[tuple[int, int], PromptFeed] = {}
        self._threads: dict[int, int] = {}  # a batch's threads, when changed as it runs

    def send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            try:
                self.conn.send(message)
            except OSError:  # the parent is gone
                os._exit(0)

    def feed(self, rid: int, index: int) -> PromptFeed:
        """Sequence ``index`` of batch ``rid``'s feed (made on first use)."""
        with self._cancel_lock:
            return self._feeds.setdefault((rid, index), PromptFeed())

    def is_cancelled(self, rid: int, index: int | None = None) -> bool:
        return (rid, None) in self._cancelled or (rid, index) in self._cancelled

    # --- the reader thread ----------------------------------------------------------------
    def read(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                os._exit(0)  # the parent died (or closed us): never outlive it
            except Exception:  # noqa: BLE001 - unreadable: die loudly, never hang the parent
                os._exit(70)
            kind = message[0]
            if kind == "exit":
                os._exit(0)
            elif kind == "cancel":
                with self._cancel_lock:
                    self._cancelled.add((message[1], message[2]))
            elif kind == "feed":
                feed = self.feed(message[1], message[2])
                for piece in message[3]:
                    feed.append(piece)
                if message[4]:
                    feed.close()
            elif kind == "threads":
                self._threads[message[1]] = message[2]
            elif kind in ("count", "cut"):
                self._answer(message[1], functools.partial(self._tokens, message))
            else:
                self.jobs.put(message)

    def _tokens(self, message: tuple[Any, ...]) -> Any:
        if self.model is None:
            raise LocalMoaError("no model is loaded in this worker")
        if message[0] == "count":
            return self.model.count_tokens(message[2])
        return self.model.cut_tokens(message[2], message[3])

    def _answer(self, rid: int, compute: Callable[[], Any]) -> None:
        try:
            value = compute()
        except Exception as exc:  # noqa: BLE001 - the parent reports it as the agent's failure
            self.send(("error", rid, _error_text(exc)))
        else:
            self.send(("value", rid, value))

    # --- the main thread ------------------------------------------------------------------
    def serve(self) -> None:
        while True:
            message = self.jobs.get()
            kind, rid = message[0], message[1]
            try:
                if kind == "load":
                    self._load(rid, message[2])
                elif kind == "chat":
                    self._chat(rid, message[2], message[3])
                elif kind == "batch":
                    self._batch(rid, message[2], message[3])
                elif kind == "embed":
                    self._answer(rid, functools.partial(self._embed, message[2]))
                else:
                    self.send(("error", rid, f"unknown request {kind!r}"))
            except Exception as exc:  # noqa: BLE001 - reported to the parent as one line
                self.send(("error", rid, _error_text(exc)))
            finally:
                with self._cancel_lock:
                    self._cancelled = {c for c in self._cancelled if c[0] != rid}
                    self._feeds = {k: f for k, f in self._feeds.items() if k[0] != rid}
                    self._threads.pop(rid, None)

    def _load(self, rid: int, params: Any) -> None:
        from .model import load_llama

        if self.model is not None:
            raise LocalMoaError("this worker already holds a model")
        self.model = load_llama(params)
        self.send(("loaded", rid, self.model.load_s, dict(self.model.runtime_facts)))

    def _embed(self, texts: list[str]) -> Any:
        if self.model is None:
            raise LocalMoaError("no model is loaded in this worker")
        return self.model.embed(texts)

    def _chat(self, rid: int, messages: list[Message], options: GenerateOptions) -> None:
        stream = self.model.chat(messages, options)
        cancelled = False
        with stream:
            for piece in stream:
                self.send(("text", rid, piece))
                if self.is_cancelled(rid):
                    cancelled = True
                    break
        self.send(("end", rid, None if cancelled else stream.stats))

    def _batch(self, rid: int,
               seqs: list[tuple[int, list[Message], GenerateOptions, str, int, bool]],
               n_threads: int) -> None:
        members = [_RemoteSequence(self, rid, index, messages, options, (text, tokens), fed)
                   for index, messages, options, text, tokens, fed in seqs]
        message = "batched decoding ended without finishing this sequence"
        try:
            self.model.decode(members, n_threads, None, lambda: self._threads.get(rid, 0))
        except Exception as exc:  # noqa: BLE001 - the batch's agents fail, not the worker
            message = _error_text(exc)
        for seq in members:  # whatever the loop did not finish
            seq.fail(message)
        self.send(("batch_end", rid))


def _error_text(exc: Exception) -> str:
    """The one line the parent reports for a failed request."""
    if isinstance(exc, LocalMoaError):
        return str(exc)
    return f"internal error in the model worker: {type(exc).__name__}: {exc}"


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    started = time.perf_counter()
    conn = Connection(socket.socket(fileno=int(argv[1])).detach())
    import llama_cpp  # noqa: F401 - the slow import, done before the first request

    server = _Server(conn)
    server.send(("ready", os.getpid(), time.perf_counter() - started))
    threading.Thread(target=server.read, name="localmoa-worker-reader", daemon=True).start()
    server.serve()


if __name__ == "__main__":
    main(sys.argv)
