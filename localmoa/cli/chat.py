"""`localmoa chat`: a conversation with a Mixture-of-Agents at a `>>>` prompt."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from .. import constants, signals
from ..chat import ChatSession, Turn
from ..errors import LocalMoaError, RunInterrupted
from ..recipe import Overrides, parse_self
from ._options import (
    AgentTimeoutOpt,
    AggregatorOpt,
    ConfigOpt,
    LayersOpt,
    MaxTokensOpt,
    MemoryBudgetOpt,
    NoBatchOpt,
    ProfileOpt,
    ProposerOpt,
    SeedOpt,
    SelfOpt,
    TemperatureOpt,
)
from ._output import Output
from ._prepare import command_runtime, load_command_config
from ._progress import RunDisplay

HELP = """\
/help            this list
/reset           start a new conversation (models stay loaded)
/layers          show or hide every agent's answer as it is written
/stats           the last turn's metrics
/profile [NAME]  show the profile, or switch to another (the conversation goes on)
/save FILE       the conversation and every intermediate answer, as JSON
/exit            quit (or Ctrl-D); Ctrl-C stops the current answer"""


def _line_editing() -> None:
    """Arrow keys and a persistent history at the prompt (readline, where there is one)."""
    try:
        import atexit
        import readline
    except ImportError:  # Windows without pyreadline
        return
    history = constants.localmoa_home() / "chat_history"
    try:
        history.parent.mkdir(parents=True, exist_ok=True)
        readline.read_history_file(history)
    except OSError:
        pass
    atexit.register(lambda: _save_history(readline, history))


def _save_history(readline: object, history: Path) -> None:
    with contextlib.suppress(OSError):
        readline.write_history_file(history)  # type: ignore[attr-defined]


def chat(
    profile: ProfileOpt = None,
    config: ConfigOpt = None,
    layers: LayersOpt = None,
    proposer: ProposerOpt = None,
    aggregator: AggregatorOpt = None,
    temperature: TemperatureOpt = None,
    max_tokens: MaxTokensOpt = None,
    seed: SeedOpt = None,
    agent_timeout: AgentTimeoutOpt = None,
    self_moa: SelfOpt = None,
    no_batch: NoBatchOpt = False,
    show_layers: Annotated[bool, typer.Option(
        "--show-layers", help="Start with the live view of every layer on (/layers toggles).")
    ] = False,
    memory_budget: MemoryBudgetOpt = None,
) -> int:
    """Talk with a Mixture-of-Agents, turn after turn, at a `>>>` prompt.

    Every agent sees the conversation so far (your turns and the final answers).
    Models stay loaded between turns when the memory plan allows; long
    conversations leave out their oldest turns to fit the models' context, with a
    notice. Type /help for the commands; Ctrl-C stops an answer, Ctrl-D quits.
    """
    cfg = load_command_config(config, no_batch)
    overrides = Overrides(
        layers=layers, proposers=tuple(proposer or ()), aggregator=aggregator,
        temperature=temperature, max_tokens=max_tokens, seed=seed, timeout_s=agent_timeout,
        self_moa=parse_self(self_moa, cfg))
    out = Output()
    session = ChatSession(cfg, overrides, profile=profile, runtime=command_runtime(
        out, cfg, memory_budget, keep_loaded=True))
    _line_editing()
    out.note(f"localmoa chat: profile [bold]{escape(session.profile or '')}[/] "
             f"({len(session.graph.layers)} layers); /help for commands, Ctrl-D to quit")
    live = show_layers
    last: Turn | None = None
    try:
        while True:
            try:
                line = input(">>> ")
            except KeyboardInterrupt:  # Ctrl-C at the prompt: a fresh prompt
                if signals.terminated():
                    raise  # SIGTERM ends the chat (exit 143), Ctrl-C does not
                signals.clear()
                print()
                continue
            except EOFError:  # Ctrl-D
                print()
                break
            text = line.strip()
            if not text:
                continue
            if text.startswith("/"):
                command, _, arg = text.partition(" ")
                if command in ("/exit", "/quit", "/bye"):
                    break
                live = _command(out, session, command, arg.strip(), live, last)
                continue
            last = _turn(out, session, text, live) or last
    finally:
        session.close()
    return 0


def _turn(out: Output, session: ChatSession, text: str, live: bool) -> Turn | None:
    display = RunDisplay(out, session.graph, show_layers=live)
    try:
        with display:
            turn = session.ask(text, events=display.events())
    except (RunInterrupted, KeyboardInterrupt) as exc:
        if display.streamed:
            out.end_stream()
        if signals.terminated() or getattr(exc, "exit_code", 0) == 143:
            raise  # SIGTERM ends the chat (exit 143); its models are freed on the way out
        signals.clear()
        out.note("[yellow]interrupted[/]: this answer is dropped, the conversation is as "
                 "it was; the models stay loaded")
        return None
    except LocalMoaError as exc:
        if display.streamed:
            out.end_stream()
        out.note(f"[red]error[/]: {escape(str(exc))}")
        return None
    if display.streamed:
        out.end_stream()
    elif turn.report.answer:  # no aggregator wrote it (selected, or skipped): say it now
        out.stream(turn.report.answer)
        out.end_stream()
    r = turn.report
    kept = "models kept loaded" if not r.actual.get("loads") else \
        f"{r.actual['loads']} model load{'s' if r.actual['loads'] != 1 else ''} " \
        f"({r.actual['load_s']:.1f} s)"
    out.note(f"[dim]{r.totals.agents} agents, {r.totals.wall_s:.1f} s, "
             f"{r.totals.tok_per_s:.0f} tok/s, {kept}[/]")
    if turn.dropped_turns:
        out.note(f"[yellow]note[/]: the {turn.dropped_turns} oldest turn(s) were left out "
                 "to fit the models' context")
    return turn


def _command(out: Output, session: ChatSession, command: str, arg: str, live: bool,
             last: Turn | None) -> bool:
    """Run a slash command; returns whether the live view is on."""
    if command == "/help":
        out.note(escape(HELP))
    elif command == "/reset":
        session.reset()
        out.note("new conversation (the models stay loaded)")
    elif command == "/layers":
        live = not live
        out.note(f"layers {'shown' if live else 'hidden'}")
    elif command == "/stats":
        if last is None:
            out.note("no turn yet")
        else:
            out.report(last.report)
    elif command == "/profile":
        if not arg:
            out.note(f"profile {escape(session.profile or '')}; others: "
                     f"{escape(', '.join(sorted(session.config.profiles)))}")
        else:
            before = session.overrides
            # Naming a profile leaves Self-MoA (--self): the profile's agents take over.
            session.overrides = replace(before, self_moa=None)
            try:
                session.use_profile(arg)
                out.note(f"profile [bold]{escape(arg)}[/] (the conversation goes on)")
            except LocalMoaError as exc:
                session.overrides = before
                out.note(f"[red]error[/]: {escape(str(exc))}")
    elif command == "/save":
        if not arg:
            out.note("usage: /save FILE")
        else:
            try:
                path = Path(arg).expanduser()
                session.save(path)
                out.note(f"saved {len(session.turns)} turns to {escape(str(path))}")
            except OSError as exc:
                why = exc.strerror or str(exc)
                out.note(f"[red]error[/]: cannot write {escape(arg)}: {escape(why)} (nothing "
                         "saved; a file already there is unchanged)")
            except LocalMoaError as exc:  # not a regular file (/dev/full, a FIFO)
                out.note(f"[red]error[/]: {escape(str(exc))}")
    else:
        out.note(f"unknown command {escape(command)}; /help lists them")
    return live
