"""What a profile in models.yaml may say: agents with their sampling and prompt
templates, proposer layers and the aggregator, ``aggregate`` and ``layers_up_to``, or a
router with named specialists. Checks that span entries (models that exist, templates
that place the references) are in config_checks.py."""

from __future__ import annotations

import shlex
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator

from .prompts import check_template
from .spec_types import OnOff, StrictModel

#: Staircase aggregation's first chunk by default, in tokens (``staircase_chunk``), and
#: the most a profile may set.
STAIRCASE_CHUNK_TOKENS = 8
STAIRCASE_CHUNK_MAX = 1024

TEMPLATE_HELP = ("Replaces the aggregate-and-synthesize prompt and the numbered references at "
                 "the head of the agent's system message; placeholders {references} (alias "
                 "{helper_response}), {query} and {layer}; {{ and }} are literal braces.")

#: A prompt template: placeholders checked when the file is read (prompts.py).
PromptTemplate = Annotated[str, AfterValidator(check_template)]


class AgentSpec(StrictModel):
    """One agent of a profile: a model with its own prompt and sampling."""

    model: str
    system: str | None = Field(None, description="The agent's own system prompt.")
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(512, ge=1, le=131_072)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    timeout_s: float | None = Field(None, gt=0, le=86_400, description="Give up on this "
                                    "agent after this many seconds (dropped, reported).")
    stop: list[str] = Field(default_factory=list, max_length=16, description="Strings that "
                            "end the agent's answer where they appear (not included).")
    prompt_template: PromptTemplate | None = Field(
        default=None, description=TEMPLATE_HELP + " Default: the profile's "
        "prompt_template, else the paper's prompt.")

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, value: list[str]) -> list[str]:
        if any(not s for s in value):
            raise ValueError("a stop string cannot be empty")
        return value


class RouterSpec(StrictModel):
    """The model in front of a profile's specialists, and how it picks them."""

    model: str
    kind: Literal["choose", "embed"] = Field(
        default="choose", description="choose: the model reads the query and names the "
        "specialists (its output constrained to their names); embed: the query's "
        "embedding against each specialist's description (cosine), cheaper.")
    pick: int = Field(default=1, ge=1, le=8, description="The most specialists chosen.")
    system: str | None = Field(default=None, description="Extra instructions for the "
                               "choosing router.")
    max_tokens: int = Field(default=48, ge=8, le=1024)


class Specialist(StrictModel):
    """A named specialist: what it is good at, and its agents or a whole profile."""

    description: str = Field(min_length=1)
    agents: list[AgentSpec] | None = Field(default=None, min_length=1, description="One "
                                           "layer of proposers.")
    profile: str | None = Field(default=None, description="A profile whose proposer "
                                "layers this specialist runs.")

    @model_validator(mode="after")
    def _agents_or_profile(self) -> Specialist:
        if (self.agents is None) == (self.profile is None):
            raise ValueError("give either agents: (a list of agents) or profile: (a "
                             "profile's name), not both and not neither")
        return self


class SelectSpec(StrictModel):
    """How ``aggregate: select`` chooses among the last layer's answers (selection/)."""

    by: Literal["confidence", "judge", "verify"] = Field(
        default="confidence",
        description="confidence: the answer of the model whose "
        "samples agree most with each other (SLM-MUX); judge: the aggregator's model names "
        "the best answer by its number (output constrained to the numbers); verify: each "
        "answer's code runs on the prompt's examples (or the check command) and the one "
        "that passes most wins.",
    )
    execute: bool = Field(
        default=False,
        description="Allow running model-written code: "
        "verify needs it; confidence then compares code by what it "
        "does on the prompt's examples. Each program runs in the eval's "
        "sandbox (README: HumanEval).",
    )
    check: str | None = Field(
        default=None,
        min_length=1,
        max_length=1000,
        description=(
            "verify: a command run on each answer in an empty folder holding answer.txt and "
            "candidate.py; exit status 0 passes."
        ),
    )
    check_timeout_s: float = Field(
        default=10.0, gt=0, le=600, description="verify: the wall-clock limit of one check."
    )

    @field_validator("check")
    @classmethod
    def _a_command(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            argv = shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"check: {exc} (it is split as a shell would, without "
                             "running one)") from None
        if not argv:
            raise ValueError("check: give a command, e.g. python3 -m pytest -q")
        return value


class Profile(StrictModel):
    """A MoA recipe: proposer layers, then the final aggregator. A routing profile has a
    router and specialists instead of layers: the router picks specialists per query and
    their agents are the proposers."""

    description: str = ""
    router: RouterSpec | None = None
    specialists: dict[str, Specialist] = Field(default_factory=dict)
    layers: list[list[AgentSpec]] = Field(default_factory=list)
    aggregator: AgentSpec
    prompt_template: PromptTemplate | None = Field(
        default=None, description=TEMPLATE_HELP + " The default of the profile's "
        "agents (aggregator included) that set none.")

    aggregate: Literal["always", "auto", "never", "select", "staircase"] = Field(
        default="always",
        description="always: the aggregator writes the answer; auto: skipped when "
        "the last layer's proposers agree (their answer is returned); never: the answer "
        "most proposers share (majority vote, ties to the first agent); select: one "
        "proposer's answer, chosen by select.by and never rewritten; staircase: the "
        "aggregator starts writing after the proposers' first words and goes on as "
        "their answers come (it needs the aggregator beside the proposers: else always).",
    )
    select: SelectSpec | None = Field(
        default=None,
        description="With aggregate: select, how the answer is chosen (default: by confidence).",
    )
    why: str | None = Field(
        default=None, min_length=1, max_length=300, description="One line: the "
        "measurement behind the profile's aggregate setting (`localmoa profiles` shows it).")
    stream_references: OnOff = Field(
        default="on", description="on: the next stage reads each proposer's answer as "
        "soon as that proposer ends (its prompt grows as they finish; the references "
        "in finishing order), when its model is loaded beside the proposers within the "
        "budget (`localmoa plan` says when it is not); off: after the whole layer, in "
        "agent order, as before (for A/B runs).")
    staircase_chunk: int = Field(
        default=STAIRCASE_CHUNK_TOKENS, ge=1, le=STAIRCASE_CHUNK_MAX, description="With "
        "aggregate: staircase, the first chunk in tokens: the aggregator starts once every "
        "live proposer has written this many and writes as many; each later round "
        "doubles it. Smaller starts the answer sooner on less of the proposers' text.")
    layers_up_to: int | None = Field(
        default=None, ge=1, le=32, description="Up to N proposer layers (the last one repeated), "
        "stopping early once a layer's answers agree.")

    def template_for(self, agent: AgentSpec) -> str | None:
        """The agent's prompt template: its own, else the profile's; None: the default."""
        return agent.prompt_template if agent.prompt_template is not None \
            else self.prompt_template

    @field_validator("layers")
    @classmethod
    def _some_layers(cls, value: list[list[AgentSpec]],
                     info: ValidationInfo) -> list[list[AgentSpec]]:
        if not value and info.data.get("router") is None:
            raise ValueError("needs at least 1 layer of proposer agents (or, instead, a "
                             "router: with specialists:)")
        return value

    @model_validator(mode="after")
    def _no_empty_layer(self) -> Profile:
        if self.router is not None and self.layers:
            raise ValueError("a routing profile's proposers are its specialists: drop layers:")
        if self.router is not None and len(self.specialists) < 2:
            raise ValueError("a router needs at least two specialists: to choose from")
        if self.specialists and self.router is None:
            raise ValueError("specialists: need a router: to choose among them")
        for i, layer in enumerate(self.layers):
            if not layer:
                raise ValueError(f"layer {i + 1} has no agents")
        if self.select is not None and self.aggregate != "select":
            raise ValueError(
                f"select: is read only with aggregate: select (this profile "
                f"has aggregate: {self.aggregate}); set aggregate: select or "
                "drop select:"
            )
        return self
