"""Reference injection: whole strings, numbered, appended to the system message."""

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
     "Be brief.\n\n" + AGGREGATE_PROMPT + "\n1. a\n2. b"),
    ([{"role": "system", "content": "S"}, {"role": "user", "content": "q"}], None, ["a"],
     "S\n\n" + AGGREGATE_PROMPT + "\n1. a"),
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
