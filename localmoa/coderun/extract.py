"""The code of a reply, and the module it completes.

``extract_code``: the fenced block that defines the function (else the first Python or
unlabelled block, else the first block), or without a fence the reply from its first
line of code on. ``solution``: the prompt's code and the reply's code as one module (a
full definition follows the prompt and replaces its stub; a bare body completes it).
``entry_point``: the function a free-form prompt asks for, for a run's ``verify``
selector, where no dataset names it.
"""

from __future__ import annotations

import re
import textwrap

_CODE_LINE = re.compile(r"^(?:from\s+\S+\s+import|import\s|def\s|async\s+def\s|class\s|@)", re.M)
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
#: A fence at the start of a line: a prompt may mention ``` inline ("reply in one
#: ```python code block") before its code.
_LINE_FENCE = re.compile(r"^[ \t]*```[ \t]*[\w+-]*[^\n]*\n(.*?)(?:^[ \t]*```|\Z)",
                         re.DOTALL | re.M)
_DEF = re.compile(r"^[ \t]*(?:async\s+)?def\s+([A-Za-z_]\w*)\s*\(", re.M)


def extract_code(reply: str, entry_point: str) -> str | None:
    """The code of a reply: the fenced block that defines ``entry_point`` (else the
    first Python or unlabelled block, else the first block), or without a fence the
    reply from its first line of code on (when it defines the function; else the whole
    reply, a bare body). None when there is no code at all."""
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(reply)]
    if not blocks:
        start = _CODE_LINE.search(reply) if defines(reply, entry_point) else None
        text = reply[start.start() :] if start else reply  # prose before the code goes
        text = text.strip("\n")
        return text if text.strip() else None
    defining = [b for _, b in blocks if defines(b, entry_point)]
    python = [b for lang, b in blocks if lang in ("python", "py", "python3", "")]
    chosen = (defining or python or [b for _, b in blocks])[0]
    return chosen.strip("\n") if chosen.strip() else None


def defines(code: str, name: str) -> bool:
    """Whether ``code`` defines a function ``name``."""
    return re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(name)}\s*\(", code, re.M) is not None


def solution(code: str, prompt: str, entry_point: str) -> str:
    """``prompt`` (the function's signature and docstring) and the reply's code as one
    module that defines the function: a full definition follows the prompt (and so
    replaces its stub); a bare body is indented under the prompt's signature."""
    if defines(code, entry_point):
        return f"{prompt}\n    pass\n\n\n{code}\n"
    body = textwrap.dedent(code)
    return prompt + textwrap.indent(body, "    ") + "\n"


def imports_of(code: str) -> str:
    """The top-level import lines of ``code`` (what a candidate's own definition may
    rely on from the prompt)."""
    return "\n".join(line for line in code.splitlines()
                     if re.match(r"(?:from\s+\S+\s+)?import\s", line))


def entry_point(prompt: str) -> str | None:
    """The function a prompt asks for: the last function defined in its code (the
    stub follows its helpers), else the function its examples call (``>>> f(``), else
    None."""
    blocks = _LINE_FENCE.findall(prompt) or [prompt]
    names = [m.group(1) for block in blocks for m in _DEF.finditer(block)]
    if names:
        return names[-1]
    called = re.search(r">>>\s*([A-Za-z_]\w*)\s*\(", prompt)
    return called.group(1) if called else None


def prompt_code(prompt: str, name: str) -> str | None:
    """The code of the prompt that defines ``name`` (a fenced block, or the prompt from
    its first line of code on): what a bare body completes. None when it has none."""
    if not defines(prompt, name):
        return None
    blocks = [b for b in _LINE_FENCE.findall(prompt) if defines(b, name)]
    return blocks[0].strip("\n") if blocks else extract_code(prompt, name)
