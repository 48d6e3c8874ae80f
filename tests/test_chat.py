"""`localmoa chat` in a real pseudo-terminal on the real tiny model, and the live view."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pexpect
import pytest
from rich.console import Console

from localmoa import load_config
from localmoa.chat import ChatSession
from localmoa.cli._live import LiveView
from localmoa.metrics import AgentRun
from localmoa.recipe import Overrides, build_graph

from .conftest import SAFETY_S, EventStream

PROMPT = ">>> "


class _Spawn(pexpect.spawn):
    """pexpect's spawn, handing the child the event pipe (ptyprocess can, pexpect not)."""

    pass_fds: tuple[int, ...] = ()

    def _spawnpty(self, args, **kwargs):  # type: ignore[no-untyped-def]
        import ptyprocess

        return ptyprocess.PtyProcess.spawn(args, pass_fds=self.pass_fds, **kwargs)


def spawn(*args: str, timeout: float = SAFETY_S,
          events: EventStream | None = None) -> pexpect.spawn:
    env = dict(os.environ, COLUMNS="120", TERM="xterm", **(events.env if events else {}))
    kind = type("Spawn", (_Spawn,), {"pass_fds": (events.write_fd,) if events else ()})
    child = kind(sys.executable, ["-m", "localmoa", "chat", *args], env=env,
                 encoding="utf-8", timeout=timeout, dimensions=(40, 120))
    if events is not None:
        events.spawned()
    child.expect_exact(PROMPT)
    return child


def test_two_turns_stats_save_and_exit(tmp_path: Path) -> None:
    child = spawn("--max-tokens", "24", "--temperature", "0", "--seed", "1")
    child.sendline("My name is Zorblax. Say hello to me.")
    child.expect(r"agents, [0-9.]+ s, [0-9]+ tok/s, 1 model load \(")
    child.expect_exact(PROMPT)
    child.sendline("What is my name?")
    child.expect(r"agents, [0-9.]+ s, [0-9]+ tok/s, models kept loaded")  # no reload per turn
    child.expect_exact(PROMPT)
    child.sendline("/stats")
    child.expect("decode|out tok/s")
    child.expect_exact(PROMPT)
    saved = tmp_path / "chat.json"
    child.sendline(f"/save {saved}")
    child.expect_exact("saved 2 turns")
    child.expect_exact(PROMPT)
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0

    doc = json.loads(saved.read_text())
    conv = doc["conversation"]
    assert [m["role"] for m in conv] == ["user", "assistant", "user", "assistant"]
    assert conv[0]["content"] == "My name is Zorblax. Say hello to me."
    assert conv[1]["content"] == doc["turns"][0]["answer"] != ""
    second = doc["turns"][1]["report"]
    assert len(second["agents"]) == 4 and all(a["answer"] for a in second["agents"])
    assert second["agents"][0]["prompt_tokens"] > doc["turns"][0]["report"]["agents"][0][
        "prompt_tokens"]  # the second turn carried the first one
    assert second["actual"]["loads"] == 0


def test_ctrl_c_stops_an_answer_and_the_chat_goes_on(tmp_path: Path) -> None:
    events = EventStream()
    child = spawn("--max-tokens", "1500", "--temperature", "0.8", "--seed", "2", events=events)
    child.sendline("Tell me a very long story about a lighthouse keeper.")
    events.wait_for("first_text", child=child, agent="L1.1")  # the answer is being written
    child.sendintr()
    child.expect_exact("interrupted")
    child.expect_exact(PROMPT)
    child.sendline("/layers")
    child.expect_exact("layers shown")
    child.expect_exact(PROMPT)
    child.sendline("/reset")
    child.expect_exact("new conversation")
    child.expect_exact(PROMPT)
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_unknown_command_and_help() -> None:
    child = spawn("--max-tokens", "8")
    child.sendline("/frobnicate")
    child.expect_exact("unknown command /frobnicate")
    child.sendline("/help")
    child.expect_exact("/save FILE")
    child.sendline("/profile nope")
    child.expect_exact("no profile named 'nope'")
    child.sendline("/exit")
    child.expect(pexpect.EOF)


def test_history_is_trimmed_oldest_first() -> None:
    config = load_config()
    session = ChatSession(config, Overrides(max_tokens=64))
    try:
        budget = session.history_budget_tokens()
        long = "word " * (budget // 3)
        for i in range(6):
            session.history += [{"role": "user", "content": f"q{i} {long}"},
                                {"role": "assistant", "content": f"a{i}"}]
        conversation, dropped = session.conversation_for("latest question")
        assert dropped > 0 and conversation[-1]["content"] == "latest question"
        assert conversation[0]["content"].startswith(f"q{dropped} ")  # oldest ones went first
    finally:
        session.close()


def test_live_view_renders_every_agent_panel() -> None:
    config = load_config()
    graph = build_graph(config, "tiny", Overrides(layers=2))
    console = Console(record=True, width=150, force_terminal=True, color_system=None)
    view = LiveView(graph, console)
    first, second, third = graph.layers[0]
    view.loading(first)
    view.started(second)
    for piece in ["Nine ", "point ", "nine."]:
        view.text(third, piece)
    view.done(first, AgentRun(agent=first.id, model=first.model, layer=1, role="proposer",
                              ok=False, error="boom: injected"))
    console.print(view.render())
    text = console.export_text()
    for agent in graph.layers[0] + graph.layers[1]:
        assert agent.id in text
    assert text.count("smollm2-135m") == 6
    assert "failed" in text and "boom: injected" in text
    assert "prefill" in text and "generating" in text and "waiting" in text
    assert "Nine point nine." in text
    assert "layer 1" in text and "layer 2" in text


@pytest.mark.parametrize(("stdout_tty", "stderr_tty", "show_layers", "live"), [
    (True, True, True, True),  # a terminal: the live view
    (False, True, True, False),  # the answer piped: plain layer answers on stderr
    (True, False, True, False),  # stderr redirected
    (True, True, False, False),  # not asked for
])
def test_live_view_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch, stdout_tty: bool,
                                      stderr_tty: bool, show_layers: bool, live: bool) -> None:
    import io

    from localmoa.cli._output import Output
    from localmoa.cli._progress import RunDisplay

    monkeypatch.setattr(sys.stdout, "isatty", lambda: stdout_tty)
    out = Output()
    out.err = Console(file=io.StringIO(), force_terminal=stderr_tty)
    graph = build_graph(load_config(), "tiny")
    display = RunDisplay(out, graph, show_layers=show_layers)
    assert (display.live is not None) is live
    assert display.show_layers is show_layers


@pytest.mark.parametrize("phase", ["prompt", "answer"])
def test_sigterm_ends_the_chat_with_143(tmp_path: Path, phase: str) -> None:
    import signal

    events = EventStream()
    child = spawn("--max-tokens", "1500", events=events)
    if phase == "answer":
        child.sendline("Tell me a very long story about a lighthouse keeper.")
        events.wait_for("first_text", child=child, agent="L1.1")
    child.kill(signal.SIGTERM)
    child.expect_exact("localmoa: error: terminated (SIGTERM)")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 143
