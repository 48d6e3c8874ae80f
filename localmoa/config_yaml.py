"""Reading a models.yaml's YAML with bounds, and where in it something is written, for
errors that name the file, the line and the field: the line of a key path, a key
written twice, and pydantic's first error as one line.

The YAML is composed with a depth bound (deep nesting is refused before Python's
recursion limit), a bound on its nodes (a 4 MiB file of ``[1,1,1,...]`` would take
minutes and gigabytes) and an alias budget (a "billion laughs" file is refused while it
is composed, not expanded). It is composed once: the data is constructed from a copy
of the node tree."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import yaml
from pydantic import ValidationError

from .errors import ConfigError, clip

#: Deepest nesting of mappings and lists (the shipped models.yaml: 6 levels).
MAX_DEPTH = 100
#: Nodes that the uses of anchors may add to a file: each alias counts its node's size.
MAX_ALIAS_NODES = 10_000
#: Nodes (scalars, lists, mappings, aliases) written in a file (the shipped one: ~460).
MAX_NODES = 100_000
_TOO_MANY_NODES = (f"more than {MAX_NODES:,} YAML nodes (a models.yaml has a few hundred); "
                   "is this the right file?")


class _LimitError(yaml.YAMLError):
    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = mark


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses deep nesting and alias expansion past a budget.

    Every composed node's size (itself and everything under it, aliases expanded) is
    kept, so an alias costs its node's size at once: the sum is bounded without ever
    walking the expanded tree."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._alias_nodes = 0
        self._nodes = 0
        self._sizes: dict[int, int] = {}

    def compose_node(self, parent: Any, index: Any) -> Any:
        mark = self.peek_event().start_mark
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise _LimitError(_TOO_MANY_NODES, mark)
        if self.check_event(yaml.AliasEvent):
            node = super().compose_node(parent, index)
            size = self._sizes.get(id(node))
            if size is None:
                raise _LimitError("a YAML alias refers to a node that contains it "
                                  "(a recursive alias); write the value out", mark)
            self._alias_nodes += size
            if self._alias_nodes > MAX_ALIAS_NODES:
                raise _LimitError(
                    f"too many YAML aliases: they expand to more than {MAX_ALIAS_NODES:,} "
                    "nodes (a \"billion laughs\" file?); write the values out or use fewer "
                    "aliases", mark)
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _LimitError(f"YAML nested more than {MAX_DEPTH} levels deep; a models.yaml "
                              "needs a handful", mark)
        node = super().compose_node(parent, index)
        self._depth -= 1
        if node is not None:
            sizes: list[int] = [self._sizes.get(id(child), 1) for child in _children(node)]
            self._sizes[id(node)] = 1 + sum(sizes)
        return node

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        # a value Python refuses (an integer of 100,000 digits, the date 2024-13-45): the
        # file and line, not an internal error
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:
            problem = str(exc)
            if node.tag == "tag:yaml.org,2002:int" and "digits" in problem:
                problem = f"an integer of {len(str(node.value)):,} digits is too long"
            raise _LimitError(f"cannot read the value {clip(str(node.value))!r}: "
                              f"{clip(problem)}", node.start_mark) from None


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def load_yaml(text: str, file: str) -> tuple[yaml.Node | None, Any]:
    """The node tree (for line numbers) and the data of one YAML document, bounded in
    depth, size and alias expansion; ConfigError with file:line for anything wrong."""
    _count_nodes_fast(text, file)
    root: yaml.Node | None = None

    def read(loader: _BoundedLoader) -> Any:
        nonlocal root
        root = loader.get_single_node()
        # constructing merges `<<:` keys into the nodes themselves: the data is built
        # from a copy, and the tree returned keeps the file as written (keys, lines)
        return None if root is None else loader.construct_document(_copy_tree(root, {}))

    data = _bounded(text, file, read)
    return root, data


def _copy_tree(node: yaml.Node, memo: dict[int, yaml.Node]) -> yaml.Node:
    """The lists and mappings of a node tree copied (scalars shared, aliases kept)."""
    if id(node) in memo or not isinstance(node, yaml.CollectionNode):
        return memo.get(id(node), node)
    copy: yaml.CollectionNode
    if isinstance(node, yaml.SequenceNode):
        copy = yaml.SequenceNode(node.tag, [], node.start_mark, node.end_mark, node.flow_style)
        memo[id(node)] = copy
        copy.value = [_copy_tree(item, memo) for item in node.value]
    else:
        copy = yaml.MappingNode(node.tag, [], node.start_mark, node.end_mark, node.flow_style)
        memo[id(node)] = copy
        copy.value = [(_copy_tree(k, memo), _copy_tree(v, memo)) for k, v in node.value]
    return copy


def _count_nodes_fast(text: str, file: str) -> None:
    """A file of more than MAX_NODES nodes refused in a tenth of a second with libyaml,
    not after PyYAML's own parser has read the first MAX_NODES (seconds). Anything else
    wrong is left to the bounded loader, which says it as always."""
    if not getattr(yaml, "__with_libyaml__", False):
        return
    nodes = 0
    try:
        for event in yaml.parse(text, Loader=yaml.CSafeLoader):
            if isinstance(event, yaml.NodeEvent):
                nodes += 1
                if nodes > MAX_NODES:
                    mark = event.start_mark
                    raise ConfigError(_TOO_MANY_NODES, file=file,
                                      line=mark.line + 1 if mark else None)
    except yaml.YAMLError:
        return


def _bounded(text: str, file: str, read: Callable[[_BoundedLoader], Any]) -> Any:
    loader: _BoundedLoader | None = None
    try:
        loader = _BoundedLoader(text)  # its reader refuses a NUL or an ESC at once
        return read(loader)
    except _LimitError as exc:
        raise ConfigError(exc.problem, file=file, line=exc.problem_mark.line + 1) from None
    except yaml.YAMLError as exc:  # every kind: a scanner's, a parser's, a reader's ...
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        if isinstance(exc, yaml.reader.ReaderError) and isinstance(exc.position, int):
            line = len(_LINE_BREAK.findall(text, 0, exc.position)) + 1
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"malformed YAML: {clip(problem)}", file=file, line=line) from None
    finally:
        if loader is not None:
            loader.dispose()


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


def find_duplicate_key(node: yaml.Node | None,
                       _walked: set[int] | None = None) -> tuple[str, int] | None:
    """The first key written twice in one mapping, with its line. A node reached again
    through an alias is not walked again (an alias bomb would be walked exponentially)."""
    walked = set() if _walked is None else _walked
    if node is None or id(node) in walked:
        return None
    walked.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode):
                if k.value in seen:
                    return k.value, k.start_mark.line + 1
                seen.add(k.value)
            found = find_duplicate_key(v, walked)
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            found = find_duplicate_key(item, walked)
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
        msg += f" (got {clip(repr(err.get('input')))})"
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


def add_model_text(text: str, file: str, name: str, entry: dict[str, Any]) -> str:
    """``text`` (a models.yaml) with ``name: entry`` under ``models:``, in place of an
    entry of that name or after the last one, every other line as it was: comments and
    layout are kept (a text edit, not a load and dump). A ``models:`` written as a flow
    mapping (``models: {}``) is rewritten as a block. The caller checks the result."""
    root, _ = load_yaml(text, file)
    newline = "\r\n" if "\r\n" in text else "\n"
    if root is None:
        return _append(text, newline, ["models:" + newline,
                                       *_entry_lines(name, entry, 2, 2, newline)])
    if not isinstance(root, yaml.MappingNode) or root.flow_style:
        raise ConfigError("models add edits a block-style models.yaml (key: value per line); "
                          "add the entry by hand", file=file, line=1)
    pairs = [(k, v) for k, v in root.value if isinstance(k, yaml.ScalarNode)]
    found = next(((k, v) for k, v in pairs if k.value == "models"), None)
    column = root.value[0][0].start_mark.column if root.value else 0
    if found is None:
        return _append(text, newline, [" " * column + "models:" + newline,
                                       *_entry_lines(name, entry, column + 2, 2, newline)])
    key, models = found
    if not isinstance(models, yaml.MappingNode) or models.flow_style or not models.value:
        return _replace_flow(text, key, models, name, entry, newline)
    return _edit_block(text, models, name, entry, newline)


_LINE_BREAK = re.compile(r"\r\n|[\r\n\x85\u2028\u2029]")
_LINE = re.compile(r"[^\r\n\x85\u2028\u2029]*(?:\r\n|[\r\n\x85\u2028\u2029])"
                   r"|[^\r\n\x85\u2028\u2029]+\Z")


def _entry_lines(name: str, entry: dict[str, Any], indent: int, step: int,
                 newline: str) -> list[str]:
    dumped = yaml.safe_dump({name: entry}, sort_keys=False, allow_unicode=True,
                            default_flow_style=False, indent=step, width=1 << 16)
    return [" " * indent + line + newline for line in dumped.splitlines()]


def _append(text: str, newline: str, lines: list[str]) -> str:
    if text and not text.endswith(("\n", "\r")):
        text += newline
    return text + "".join(lines)


def _replace_flow(text: str, key: yaml.Node, models: yaml.Node, name: str,
                  entry: dict[str, Any], newline: str) -> str:
    """``models:`` with no value, ``{}`` or a flow mapping: the value becomes a block."""
    old = load_yaml(text, "")[1]["models"] if isinstance(models, yaml.MappingNode) else {}
    indent = key.start_mark.column + 2
    lines: list[str] = []
    for other, value in old.items():
        if other != name:
            lines += _entry_lines(other, value, indent, 2, newline)
    lines += _entry_lines(name, entry, indent, 2, newline)
    start, end = models.start_mark.index, models.end_mark.index
    line_end = _LINE_BREAK.search(text, end)
    stop = line_end.start() if line_end else len(text)
    # `models: {}  # comment`: the comment stays on the models: line, the block below it
    head = text[:start].rstrip(" \t") + text[end:stop]
    return head + newline + "".join(lines).removesuffix(newline) + (text[stop:] or newline)


def _edit_block(text: str, models: yaml.MappingNode, name: str, entry: dict[str, Any],
                newline: str) -> str:
    lines = _LINE.findall(text)  # YAML's line breaks (str.splitlines knows more)
    keys = [k for k, _ in models.value]
    column = keys[0].start_mark.column
    first_value = models.value[0][1]
    step = 2
    if isinstance(first_value, yaml.MappingNode) and not first_value.flow_style \
            and first_value.value:
        step = max(1, first_value.value[0][0].start_mark.column - column)
    end = models.end_mark
    limit = end.line if end.index < len(text) else len(lines)
    new = _entry_lines(name, entry, column, step, newline)
    for i, key in enumerate(keys):
        if isinstance(key, yaml.ScalarNode) and key.value == name:  # --force: in its place
            stop = keys[i + 1].start_mark.line if i + 1 < len(keys) else limit
            first, last = key.start_mark.line, _content_end(lines, key.start_mark.line,
                                                            stop, column)
            # its comment lines stay, after it (what they say may still hold)
            kept = [line for line in lines[first + 1:last] if line.lstrip().startswith("#")]
            return "".join(lines[:first] + new + kept + lines[last:])
    last = _content_end(lines, keys[-1].start_mark.line, limit, column)
    if last and not lines[last - 1].endswith(("\n", "\r")):
        lines[last - 1] += newline
    return "".join(lines[:last] + new + lines[last:])


def _content_end(lines: list[str], start: int, stop: int, column: int) -> int:
    """The line after an entry's last line: blank lines and comments no deeper than its
    key, before the next key, belong to what follows."""
    for number in range(min(stop, len(lines)) - 1, start, -1):
        stripped = lines[number].strip()
        indent = len(lines[number]) - len(lines[number].lstrip(" "))
        if stripped and not (stripped.startswith("#") and indent <= column):
            return number + 1
    return start + 1
