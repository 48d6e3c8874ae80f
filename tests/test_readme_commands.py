"""The README's two commands are what a newcomer pastes and what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```sh\n(.+?)\n```", text, flags=re.S)[:2]


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    test_command = _readme_commands()[1]
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert test_command in ci, "the README's test command and .ci/run differ"


def test_the_test_command_installs_what_the_page_test_needs() -> None:
    """The page test needs Debian's chromium: the command sets it up itself."""
    test_command = _readme_commands()[1]
    assert test_command.startswith("sh tests/install-browser.sh && ")
    script = (REPO / "tests" / "install-browser.sh").read_text(encoding="utf-8")
    assert "apt-get update" in script and "apt-get install -y -q chromium" in script
