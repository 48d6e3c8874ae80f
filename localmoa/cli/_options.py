"""Options shared by several commands, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ProfileOpt = Annotated[
    str | None,
    typer.Option("--profile", "-p", help="Profile (MoA recipe) from models.yaml. Default: tiny.",
                 show_default=False),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="A models.yaml that extends or overrides the shipped "
                 "one. Default: $LOCALMOA_CONFIG or ~/.config/localmoa/models.yaml.",
                 show_default=False, dir_okay=False),
]
JsonOpt = Annotated[
    bool,
    typer.Option("--json", help="Print one JSON document on stdout instead of text and tables."),
]
