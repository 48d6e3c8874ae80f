"""Where in a models.yaml something is written, for errors that name the file, the
line and the field: the line of a key path, a key written twice, and pydantic's first
error as one line."""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import ValidationError

from .errors import ConfigError


class NodeIndex:
    """Finds the line of a field path in a composed YAML node tree."""

    def __init__(self, root: yaml.Node | None) -> None:
        self.root = root

    def line_of(self, loc: tuple[Any, ...]) -> int | None:
        """Line of the deepest key (or list item) of ``loc`` present in the file."""
        node = self.root
        if node is None:
            return None
        line = node.start_mark.line + 1
        for key in loc:
            if isinstance(node, yaml.MappingNode):
                match = next(((k, v) for k, v in node.value if k.value == str(key)), None)
                if match is None:
                    break  # a missing field: the line of the entry that lacks it
                line, node = match[0].start_mark.line + 1, match[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) \
                    and key < len(node.value):
                node = node.value[key]
                line = node.start_mark.line + 1
            else:
                break
        return line


def format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def find_duplicate_key(node: yaml.Node | None) -> tuple[str, int] | None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for k, v in node.value:
            if k.value in seen:
                return k.value, k.start_mark.line + 1
            seen.add(k.value)
            found = find_duplicate_key(v)
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            found = find_duplicate_key(item)
            if found:
                return found
    return None


def pydantic_message(err: Any, misplaced: dict[str, str] | None = None,
                      hide_input: bool = False) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        key = str(err["loc"][0]) if len(err["loc"]) == 1 else ""  # a key of the entry itself
        if misplaced and key in misplaced:
            return misplaced[key]
        return "unknown key (check the spelling; see models.yaml in the README)"
    if kind == "missing":
        return "required field is missing"
    msg = str(err["msg"])
    msg = msg.removeprefix("Value error, ")
    if (kind.endswith("_type") or kind in ("literal_error", "enum")) and not hide_input:
        msg += f" (got {err.get('input')!r})"
    return msg


def raise_first(exc: ValidationError, file: str, index: NodeIndex,
                 prefix: tuple[Any, ...] = (), misplaced: dict[str, str] | None = None,
                 hide_input: bool = False) -> None:
    """The first of pydantic's errors as one line with its file, line and field (without
    the value written when the schema hides inputs: it may be a secret)."""
    errors = exc.errors()
    first = errors[0]
    loc = (*prefix, *first["loc"])
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    raise ConfigError(pydantic_message(first, misplaced, hide_input) + more, file=file,
                      line=index.line_of(loc), field=format_loc(loc)) from None
