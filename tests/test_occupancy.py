"""One busy/idle state per instance (localmoa/occupancy.py): the host's claim and the
model's generations read and write the same object."""

from __future__ import annotations

import pytest

from localmoa.errors import GenerationError
from localmoa.occupancy import Occupancy

from .scripted import ScriptedModel


def test_a_claim_is_given_once_until_released() -> None:
    state = Occupancy("m")
    assert state.claim() and state.busy and state.claimed
    assert not state.claim()
    state.release()
    assert not state.busy and state.claim()


def test_a_second_generation_is_refused_not_waited_on() -> None:
    state = Occupancy("m")
    with state.generation():
        assert state.busy and state.generating
        with pytest.raises(GenerationError, match="already generating"), state.generation():
            pass
    assert not state.busy


def test_an_unload_during_a_generation_runs_when_it_ends() -> None:
    state = Occupancy("m")
    done: list[str] = []
    with state.generation():
        state.after_generation(lambda: done.append("unloaded"))
        assert done == []
    assert done == ["unloaded"]
    state.after_generation(lambda: done.append("now"))  # idle: at once
    assert done == ["unloaded", "now"]


def test_no_generation_starts_under_an_unload() -> None:
    state = Occupancy("m")
    seen: list[bool] = []

    def unload() -> None:
        with pytest.raises(GenerationError), state.generation():
            pass
        seen.append(state.generating)

    state.after_generation(unload)
    assert seen == [True] and not state.generating


def test_an_unload_asked_for_during_one_runs_after_it_under_the_mark() -> None:
    state = Occupancy("m")
    done: list[tuple[str, bool]] = []

    def first() -> None:
        state.after_generation(lambda: done.append(("second", state.generating)))
        done.append(("first", state.generating))

    with state.generation():
        state.after_generation(first)
    assert done == [("first", True), ("second", True)] and not state.generating


def test_a_failing_unload_takes_the_mark_off() -> None:
    state = Occupancy("m")

    def broken() -> None:
        raise RuntimeError("unload failed")

    with pytest.raises(RuntimeError):
        state.after_generation(broken)
    assert not state.generating
    with state.generation():
        pass


def test_the_host_and_the_model_share_it() -> None:
    """A model gets its occupancy from the LoadedModel protocol; the host's busy flag
    is that object's claim, so a claim by the host is seen by the model, and back."""
    from localmoa.host import Loaded
    from localmoa.memory.planner import Instance

    model = ScriptedModel.__new__(ScriptedModel)
    model.name = "m"
    entry = Loaded(Instance("m", 0), model)
    assert model.occupancy is model.occupancy
    assert not entry.busy
    assert model.occupancy.claim()
    assert entry.busy
    model.occupancy.release()
    assert not entry.busy
