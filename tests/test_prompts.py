"""Reference injection: whole strings, numbered, first in the system message (shared
parts first, the agent's own prompt last)."""

from __future__ import annotations

import pytest

from localmoa.prompts import AGGREGATE_PROMPT, agent_messages, aggregate_system

REFS = ["First answer.\nIt has two lines.", "Second: 9.9 > 9.11", "Third"]


def test_numbered_whole_references() -> None:
    text = aggregate_system(REFS)
    assert text.startswith(AGGREGATE_PROMPT)
    assert "\n1. First answer.\nIt has two lines.\n2. Second: 9.9 > 9.11\n3. Third" in text


def test_a_single_string_is_not_split_into_characters() -> None:
    with pytest.raises(TypeError):
        aggregate_system("abc")  # type: ignore[arg-type]


@pytest.mark.parametrize(("conversation", "system", "refs", "expected_system"), [
    ([{"role": "user", "content": "q"}], None, None, None),
    ([{"role": "user", "content": "q"}], "Be brief.", None, "Be brief."),
    ([{"role": "user", "content": "q"}], None, ["a"], AGGREGATE_PROMPT + "\n1. a"),
    ([{"role": "user", "content": "q"}], "Be brief.", ["a", "b"],
     AGGREGATE_PROMPT + "\n1. a\n2. b\n\nBe brief."),
    ([{"role": "system", "content": "S"}, {"role": "user", "content": "q"}], None, ["a"],
     AGGREGATE_PROMPT + "\n1. a\n\nS"),
    ([{"role": "system", "content": "S"}, {"role": "user", "content": "q"}], "Be brief.",
     ["a"], AGGREGATE_PROMPT + "\n1. a\n\nS\n\nBe brief."),
    ([{"role": "system", "content": "S"}, {"role": "user", "content": "q"}], "Be brief.",
     None, "S\n\nBe brief."),
])
def test_agent_messages(conversation, system, refs, expected_system) -> None:
    messages = agent_messages(conversation, system, refs)
    assert messages[-1] == {"role": "user", "content": "q"}
    if expected_system is None:
        assert all(m["role"] != "system" for m in messages)
    else:
        assert messages[0] == {"role": "system", "content": expected_system}
        assert sum(m["role"] == "system" for m in messages) == 1
    assert conversation[0]["content"] in ("q", "S")  # the input is not mutated


def test_agents_of_a_layer_share_everything_but_their_own_prompt() -> None:
    conversation = [{"role": "system", "content": "S"}, {"role": "user", "content": "q"}]
    a = agent_messages(conversation, "You are a teacher.", REFS)[0]["content"]
    b = agent_messages(conversation, "You are a skeptic.", REFS)[0]["content"]
    common = len(next(iter(p for p in [a[:i] for i in range(len(a), 0, -1)]
                            if b.startswith(p)), ""))
    assert a[:common].endswith("S\n\nYou are a ")  # all but the agents' own words
