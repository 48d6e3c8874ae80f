"""The `localmoa` command. This module only wires the commands together."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from .. import __version__, constants, netguard, signals
from ._errors import run_guarded
from .bench import EPILOG as BENCH_EPILOG
from .bench import bench
from .chat import chat
from .doctor import EPILOG as DOCTOR_EPILOG
from .doctor import doctor
from .eval import EPILOG as EVAL_EPILOG
from .eval import eval_command
from .models import app as models_app
from .plan import EPILOG as PLAN_EPILOG
from .plan import plan
from .profiles import profiles
from .run import EPILOG as RUN_EPILOG
from .run import run
from .serve import EPILOG as SERVE_EPILOG
from .serve import serve

app = typer.Typer(
    name="localmoa",
    help=(
        "Several open models answer together, on your machine, offline.\n\n"
        "localmoa runs a Mixture-of-Agents: proposer models answer your prompt, "
        "aggregation layers read all previous answers and write better ones, and a "
        "final aggregator writes the answer. Models are GGUF files served by llama.cpp "
        "in-process. Nothing is downloaded at run time.\n\n"
        "Start with:  localmoa run \"Which is larger, 9.11 or 9.9?\"  (the offline `tiny` "
        "profile; pip install \"localmoa[tiny]\")"
    ),
    epilog="Config: the shipped models.yaml, extended by --config, $LOCALMOA_CONFIG or "
    "~/.config/localmoa/models.yaml. Set LOCALMOA_DEBUG=1 for tracebacks.",
    invoke_without_command=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("run", epilog=RUN_EPILOG)(run)
app.command("chat")(chat)
app.command("bench", epilog=BENCH_EPILOG)(bench)
app.command("eval", epilog=EVAL_EPILOG)(eval_command)
app.command("plan", epilog=PLAN_EPILOG)(plan)
app.command("profiles")(profiles)
app.command("doctor", epilog=DOCTOR_EPILOG)(doctor)
app.command("serve", epilog=SERVE_EPILOG)(serve)
app.add_typer(models_app, name="models")


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"localmoa {__version__}\n")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Several open models answer together, on your machine, offline."""
    if ctx.invoked_subcommand is None:  # bare `localmoa`: teach, do not complain
        sys.stdout.write(ctx.get_help() + "\n")
        raise typer.Exit(0)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: run the app, turning failures into one line and a code."""
    args = sys.argv[1:] if argv is None else argv
    if args[:2] != ["models", "pull"]:  # the one command allowed to use the network
        constants.go_offline()
        netguard.install()
    signals.install()
    code = run_guarded(lambda: app(args=args, prog_name="localmoa", standalone_mode=False))
    sys.exit(code)
