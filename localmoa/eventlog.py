"""LOCALMOA_EVENT_LOG=FILE: what the engine does, as it happens, one JSON object a line.

For tools that follow a run from outside (and for tests, which wait for the phase
they need instead of sleeping). Each line has ``t`` (seconds since the run
started), ``event`` and its fields:

- ``run_start`` (profile, waves) and ``run_end`` (ok, error);
- ``loading`` / ``loaded`` / ``load_failed`` (model, instance; load_s or error);
- ``prefill`` (agent, model): the agent's call began, its prompt is being evaluated;
- ``first_text`` (agent): its first piece of text arrived;
- ``agent_done`` (agent, ok, error), ``abandoned`` (agent, instance), ``released``
  (instance: an abandoned agent returned and its instance was freed);
- ``batch`` (a batch starts decoding), ``threads`` (instance, threads: the last batch
  left in a wave decodes with every core from here), ``worker_restarted`` (instance, pid, reason,
  sequences: a batch's worker died on its own and a fresh one resumes them);
- ``layer_done`` (layer), ``interrupted`` (signal).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, TextIO


class EventLog:
    """Appends events to a file; a no-op without one."""

    def __init__(self, path: Path | None, t0: float | None = None) -> None:
        self.t0 = time.perf_counter() if t0 is None else t0
        self._lock = threading.Lock()
        self._fh: TextIO | None = None
        if path is not None:
            try:
                self._fh = path.open("a", encoding="utf-8")
            except OSError:
                self._fh = None  # a log that cannot be written never stops a run

    def __call__(self, event: str, **fields: Any) -> None:
        if self._fh is None:
            return
        line = json.dumps({"t": round(time.perf_counter() - self.t0, 4), "event": event,
                           **fields}, ensure_ascii=False)
        with self._lock:
            try:
                self._fh.write(line + "\n")
                self._fh.flush()
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None
