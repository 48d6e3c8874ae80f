"""SIGTERM (or Ctrl-C) on `localmoa serve`: a drain that ends cleanly.

uvicorn's own shutdown stops listening at once (new clients are refused a connection)
and, when its grace period ends, cancels the answers still running (a stream stops with
no end, a whole answer becomes a plain-text 500 and two tracebacks). So the signal is
handled here instead:

1. The service closes: the server keeps listening, and every new request but
   ``/health`` (which says ``draining``) gets 503 with ``Retry-After``.
2. The requests accepted (running or queued) get ``--drain`` seconds to end.
3. Those still going are stopped: each response ends at once in its API's error shape
   (a stream with its final error event and its end, a whole answer with a 503 JSON
   error), without waiting for its run to see the stop (a run sees it at its next
   token, which on a loaded machine may be seconds away): the run is cancelled and
   ends on its own, unread (``bridge.end_streams``).
4. Once every run has ended and every answer is written (or ``FINISH_S`` has passed
   for each), uvicorn is asked to exit.

A second signal during the drain stops the requests at once (step 3); a third is
uvicorn's own: exit now.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from .bridge import end_streams
from .guard import Inflight
from .service import STOP_S, MoaService

#: Seconds the stopped requests get to end and write their last words before uvicorn
#: exits.
FINISH_S = STOP_S
#: uvicorn's own grace, once the drain is over (only a client that reads nothing
#: is still being answered then).
UVICORN_GRACE_S = 5.0


class Drain:
    """The steps of the module's note, on a thread of their own; ``exit`` is called at
    the end (it asks uvicorn to stop)."""

    def __init__(self, service: MoaService, inflight: Inflight, drain_s: float,
                 exit: Callable[[], None], note: Callable[[str], None]) -> None:
        self.service = service
        self.inflight = inflight
        self.drain_s = drain_s
        self.exit = exit
        self.note = note
        self.signals = 0
        self._signalled = threading.Event()
        self._wake = threading.Event()  # every request ended, or a second signal
        self._hurried = False
        # started now and waiting: a signal handler only sets flags (it runs between two
        # bytecodes of the event loop, which may hold any lock)
        self.thread = threading.Thread(target=self._run, name="localmoa-drain", daemon=True)
        self.thread.start()

    def signal(self) -> bool:
        """A signal arrived: start the drain (the first), stop the requests now (the
        second); False from the third on (the caller exits at once)."""
        self.signals += 1
        if self.signals == 1:
            self.service.begin_close()  # before returning: no request slips in after
            self._signalled.set()
        elif self.signals == 2:
            self._hurried = True
            self._wake.set()
        return self.signals <= 2

    def _run(self) -> None:
        self._signalled.wait()
        try:  # said here, not in the signal handler (it may interrupt a write to stderr)
            self.note(f"localmoa serve draining: the requests in flight get up to "
                      f"{self.drain_s:g} s, new ones get 503 (a second signal stops them now)")
            ended = threading.Event()
            threading.Thread(target=self._wait_all, args=(ended,), name="localmoa-drain-wait",
                             daemon=True).start()
            self._wake.wait(self.drain_s)
            if not ended.is_set():
                reason = ("the server is shutting down now" if self._hurried else
                          f"the server is shutting down: its drain of {self.drain_s:g} s "
                          "ran out before this request ended")
                self.service.stop_jobs(reason)
                end_streams(self.service, reason)  # the answers end now, not at a token
                self.service.wait_idle(FINISH_S)
                self.inflight.wait_idle(FINISH_S)
        finally:
            self.exit()

    def _wait_all(self, ended: threading.Event) -> None:
        if self.service.wait_idle(self.drain_s) and self.inflight.wait_idle(self.drain_s):
            ended.set()
        self._wake.set()


def serve(app: Any, sock: socket.socket, service: MoaService, drain_s: float,
          access_log: bool, note: Callable[[str], None]) -> None:
    """Run ``app`` on the bound ``sock`` with uvicorn until a signal's drain ends;
    ``note`` says when the drain starts."""
    import uvicorn

    inflight: Inflight = app.state.inflight

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if not drain.signal():
                super().handle_exit(sig, frame)

    config = uvicorn.Config(app, log_level="warning", access_log=access_log,
                            timeout_graceful_shutdown=int(UVICORN_GRACE_S))
    server = Server(config)

    def stop() -> None:
        server.should_exit = True

    drain = Drain(service, inflight, drain_s, stop, note)
    server.run(sockets=[sock])
