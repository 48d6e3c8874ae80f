"""Hostile models.yaml files through the real CLI: a "billion laughs" alias bomb, deep
nesting, a recursive alias, model names serve could not list. One line with file:line,
exit 2, in well under the subprocess timeout (a safety net only); then the loader's
bounds as a table, in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

from localmoa.config_yaml import MAX_ALIAS_NODES, MAX_DEPTH, find_duplicate_key, load_yaml
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
