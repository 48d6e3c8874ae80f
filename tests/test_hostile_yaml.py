"""Hostile models.yaml files through the real CLI: a "billion laughs" alias bomb, deep
nesting, a recursive alias, model names serve could not list. One line with file:line,
exit 2, in well under the subprocess timeout (a safety net only); then the loader's
bounds as a table, in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

from localmoa import config_yaml
from localmoa.config_yaml import (
    MAX_ALIAS_NODES,
    MAX_DEPTH,
    MAX_NODES,
    NodeIndex,
    find_duplicate_key,
    load_yaml,
)
from localmoa.errors import ConfigError

from .conftest import cli
from .test_bad_input import assert_one_line

NET = 120


def billion_laughs(levels: int = 9, width: int = 10) -> str:
    """The classic: each level a list of ``width`` aliases of the level below (10^9 lols)."""
    lines = ['lol0: &lol0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels + 1):
        refs = ", ".join([f"*lol{level - 1}"] * width)
        lines.append(f"lol{level}: &lol{level} [{refs}]")
    return "\n".join(lines) + "\n"


def test_billion_laughs_is_refused_while_composing(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    # at the top level (an unknown key) and where the schema would walk it (a profile)
    bomb.write_text(billion_laughs() + "profiles:\n  p:\n    layers: *lol9\n", encoding="utf-8")
    proc = cli("plan", "--config", str(bomb), timeout=NET)
    assert_one_line(proc, 2, f"{bomb}:4: too many YAML aliases",
                    f"more than {MAX_ALIAS_NODES:,} nodes")


def test_a_key_written_twice_under_an_alias_is_found_once(tmp_path: Path) -> None:
    # the duplicate-key walk does not walk an anchored node again at each alias
    cfg = tmp_path / "dup.yaml"
    cfg.write_text("base: &b {x: 1, x: 2}\nmore: [*b, *b, *b]\n", encoding="utf-8")
    proc = cli("plan", "--config", str(cfg), timeout=NET)
    assert_one_line(proc, 2, f"{cfg}:1: x: key appears twice")


@pytest.mark.parametrize(("text", "line"), [
    ("[" * 10_000, 1),                                    # flow lists
    ("models: " + "{a: " * 10_000, 1),                     # flow mappings
    ("".join(" " * i + "- \n" for i in range(0, 400, 2)), MAX_DEPTH + 1),  # block lists
    ("".join(" " * i + "k:\n" for i in range(0, 400, 2)), MAX_DEPTH),  # block maps: the key
], ids=["brackets", "braces", "block-lists", "block-maps"])
def test_deep_nesting_is_one_line(tmp_path: Path, text: str, line: int) -> None:
    deep = tmp_path / "deep.yaml"
    deep.write_text(text, encoding="utf-8")
    proc = cli("plan", "--config", str(deep), timeout=NET)
    assert_one_line(proc, 2, f"{deep}:{line}: YAML nested more than {MAX_DEPTH} levels deep")


def test_recursive_alias(tmp_path: Path) -> None:
    cfg = tmp_path / "loop.yaml"
    cfg.write_text("profiles:\n  p: &p\n    layers: [*p]\n", encoding="utf-8")
    proc = cli("plan", "--config", str(cfg), timeout=NET)
    assert_one_line(proc, 2, f"{cfg}:3: a YAML alias refers to a node that contains it")


@pytest.mark.parametrize("name", ["moa:tiny", "has space", "a/b", "-dash", "tab\there",
                                  "new\nline", "ünïcode"])
def test_model_names_serve_could_not_list(tmp_path: Path, name: str) -> None:
    cfg = tmp_path / "names.yaml"
    cfg.write_text(f"models:\n  ok-1.5_b:\n    backend: ollama\n    source: {{ollama: a}}\n"
                   f"  {name!r}:\n    backend: ollama\n    source: {{ollama: b}}\n"
                   .replace("'", '"'), encoding="utf-8")
    proc = cli("plan", "--config", str(cfg), timeout=NET)
    assert_one_line(proc, 2, f"{cfg}:5: models: ", "cannot be a model name",
                    "letters, digits, '.', '_' and '-'")


# the loader's bounds, in-process
def test_anchors_in_moderation_still_work() -> None:
    text = ("sampling: &s {temperature: 0.7, top_p: 0.9}\n"
            "base: &base {backend: ollama, n_ctx: 4096}\n"
            "list: [*s, *s, *s, *s]\n"
            "merged: {<<: *base, n_ctx: 8192}\n")
    root, data = load_yaml(text, "f.yaml")
    assert data["list"] == [data["sampling"]] * 4
    assert data["merged"] == {"backend": "ollama", "n_ctx": 8192}
    assert find_duplicate_key(root) is None


def test_alias_budget_counts_expanded_nodes() -> None:
    # one anchored list of 99 scalars (100 nodes), used 100 times: 10,000 nodes, the budget
    items = ", ".join(["x"] * 99)
    load_yaml(f"a: &a [{items}]\nb: [{', '.join(['*a'] * 100)}]\n", "f.yaml")
    with pytest.raises(ConfigError, match=r"f.yaml:3: too many YAML aliases"):
        load_yaml(f"a: &a [{items}]\nb: [{', '.join(['*a'] * 100)}]\nc: *a\n", "f.yaml")


def test_depth_bound_is_exact() -> None:
    load_yaml("[" * MAX_DEPTH + "]" * MAX_DEPTH, "f.yaml")
    with pytest.raises(ConfigError, match=f"nested more than {MAX_DEPTH} levels"):
        load_yaml("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "f.yaml")


# a file under the 4 MiB cap with too many nodes: refused while composing, one short line
@pytest.mark.parametrize(("text", "line"), [
    ("models: [" + ",".join(["1"] * 1_500_000) + "]\n", 1),              # 3 MB, one line
    ("models:\n" + "".join(f"  k{i % 10}: 1\n" for i in range(200_000)), 50_000),  # keys
], ids=["flow-list", "repeated-keys"])
def test_too_many_nodes_is_one_short_line(tmp_path: Path, text: str, line: int) -> None:
    big = tmp_path / "big.yaml"
    big.write_text(text, encoding="utf-8")
    proc = cli("plan", "--config", str(big), timeout=NET)
    assert_one_line(proc, 2, f"{big}:{line}: more than {MAX_NODES:,} YAML nodes")
    assert len(proc.stderr) < 300


@pytest.mark.parametrize("libyaml", [True, False], ids=["libyaml-count", "pyyaml-only"])
def test_node_bound_is_exact_with_and_without_libyaml(monkeypatch: pytest.MonkeyPatch,
                                                       libyaml: bool) -> None:
    # the fast count (libyaml) and the bounded loader's own count agree, node for node
    monkeypatch.setattr(config_yaml, "MAX_NODES", 12)
    if not libyaml:
        monkeypatch.setattr(config_yaml.yaml, "__with_libyaml__", False)
    load_yaml("a: [1, 2, 3]\nb: &x {c: 1}\nd: *x\n", "f.yaml")  # 12 nodes, the alias too
    with pytest.raises(ConfigError, match=r"^f.yaml:4: more than .* YAML nodes"):
        load_yaml("a: [1, 2, 3]\nb: &x {c: 1}\nd: *x\ne: 1\n", "f.yaml")


def test_merge_keys_leave_the_index_tree_as_written() -> None:
    # composed once: the data is built from a copy, the tree keeps its `<<` key and lines
    root, data = load_yaml("base: &b {n_ctx: 1}\nm:\n  <<: *b\n  top_p: 1\n", "f.yaml")
    assert data["m"] == {"n_ctx": 1, "top_p": 1}
    assert [k.value for k, _ in root.value[1][1].value] == ["<<", "top_p"]
    assert NodeIndex(root).line_of(("m", "top_p")) == 4


@pytest.mark.parametrize(("raw", "fragments"), [
    (b"models: {}\n\x00\n", [":2: malformed YAML: unacceptable character #x0000"]),
    (b"models: {}\nx: a\x1bb\n", [":2: malformed YAML: unacceptable character #x001b"]),
    (b"n_ctx: " + b"9" * 100_000 + b"\n",
     [":1: cannot read the value '99", "\u2026': an integer of 100,000 digits is too long"]),
    (b"models: {}\nwhen: 2024-13-45\n", [":2: cannot read the value '2024-13-45'"]),
], ids=["nul", "esc", "huge-int", "bad-date"])
def test_values_yaml_or_python_refuse_are_one_line(tmp_path: Path, raw: bytes,
                                                    fragments: list[str]) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_bytes(raw)
    proc = cli("plan", "--config", str(cfg), timeout=NET)
    assert_one_line(proc, 2, *[f"{cfg}{f}" if f.startswith(":") else f for f in fragments])
    assert len(proc.stderr) < 300


def test_proc_environ_as_config_is_one_line() -> None:
    # a /proc file reads as a regular file of size 0; its NULs are a YAML reader's error
    environ = Path("/proc/self/environ")
    if not environ.exists():
        pytest.skip("no /proc")
    proc = cli("plan", "--config", str(environ), env={"LOCALMOA_T": "x"}, timeout=NET)
    assert_one_line(proc, 2, f"{environ}:1: malformed YAML: unacceptable character #x0000")


# a value the file wrote, repeated in an error: clipped to 100 characters and an ellipsis
@pytest.mark.parametrize(("text", "fragments"), [
    ("models: [" + ",".join(["1"] * 50_000) + "]\n",
     [":1: models: Input should be a valid dictionary", "(got [1, 1, 1, 1,", "…)"]),
    ("models:\n  ? " + "x" * 500_000 + "\n  : {backend: ollama}\n",  # a key past 1024
     [":2: models: 'xxxxxxxx", "…' cannot be a model name"]),             # characters
    ("models: {}\nprofiles: {}\ndefault_profile: " + "p" * 500_000 + "\n",
     ["default_profile 'ppppp", "…' is not a profile"]),
    ("models:\n  a: {backend: " + "b" * 500_000 + "}\n",
     [":2: models.a.backend: backend must be a name", "(got 'bbbbb", "…)"]),
    ("models: {}\n? " + "k" * 500_000 + "\n: 1\n? " + "k" * 500_000 + "\n: 2\n",
     [":4: kkkkk", "…: key appears twice"]),
], ids=["pydantic-got", "model-name", "profile-name", "backend-name", "duplicate-key"])
def test_long_values_are_clipped_in_errors(tmp_path: Path, text: str,
                                           fragments: list[str]) -> None:
    cfg = tmp_path / "long.yaml"
    cfg.write_text(text, encoding="utf-8")
    proc = cli("plan", "--config", str(cfg), timeout=NET)
    assert_one_line(proc, 2, *[f"{cfg}{f}" if f.startswith(":") else f for f in fragments])
    assert len(proc.stderr) < 600, proc.stderr[:1000]
