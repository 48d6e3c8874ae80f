"""One table that turns exceptions into a one-line message and an exit code.

A traceback is shown only with LOCALMOA_DEBUG=1.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import typer

from .. import constants, signals
from ..errors import LocalMoaError

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

def error_line(message: str) -> None:
    """Write ``localmoa: error: MESSAGE`` as one line on stderr."""
    one_line = " ".join(message.split())
    sys.stderr.write(f"localmoa: error: {one_line}\n")
    sys.stderr.flush()


def run_guarded(call: Callable[[], object]) -> int:
    """Run the CLI, mapping every failure to one line and an exit code."""
    result: object
    try:
        result = call()
    except LocalMoaError as exc:
        if constants.debug():
            raise
        error_line(str(exc))
        return exc.exit_code
    except typer.Exit as exc:
        result = exc.exit_code
    except typer.Abort:
        return _interrupted()
    except typer.TyperException as exc:  # typer's (vendored click) usage errors
        if constants.debug():
            raise
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        error_line(message + hint)
        return EXIT_USAGE
    except KeyboardInterrupt:  # Ctrl-C, or Terminated from the SIGTERM handler
        return _interrupted()
    except BrokenPipeError:
        return EXIT_OK  # `localmoa run ... | head` closed the pipe: not an error
    except Exception as exc:  # noqa: BLE001 - the last line of defence
        if constants.debug():
            raise
        error_line(f"internal error: {type(exc).__name__}: {exc} "
                   "(run again with LOCALMOA_DEBUG=1 for the traceback, and report it)")
        return EXIT_RUNTIME
    code = result if isinstance(result, int) else EXIT_OK
    if code == EXIT_INTERRUPTED:  # typer turns Ctrl-C (and SIGTERM) into a silent Exit(130)
        return _interrupted()
    return code


def _interrupted() -> int:
    """The one line and the exit code of a Ctrl-C (130) or a SIGTERM (143)."""
    if signals.terminated():
        error_line("terminated (SIGTERM)")
        return EXIT_TERMINATED
    error_line("interrupted")
    return EXIT_INTERRUPTED
