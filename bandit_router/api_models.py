"""The HTTP API's request and response bodies (pydantic), with the examples shown at /docs.

Requests are strict (no "0.5" for a number, no unknown fields, finite numbers only) so a typo is a
422 naming the field rather than a silently ignored setting.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from bandit_router.catalog import MODEL_NAME
from bandit_router.route_request import MAX_FEATURE_MAGNITUDE

MAX_PROMPT_CHARS = 1_000_000
MAX_CANDIDATES = 1_000
MAX_FEATURES = 1 << 16
MAX_TOKENS = 10**12


def _unicode(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode text (it holds a lone surrogate)") from None
    return value


def _model_name(value: str) -> str:
    if not MODEL_NAME.fullmatch(value):
        raise ValueError("a model name has 1-200 characters from A-Z a-z 0-9 . _ : / @ -")
    return value


Text = Annotated[str, AfterValidator(_unicode)]
Identifier = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_unicode)]
ModelName = Annotated[str, AfterValidator(_model_name)]
Feature = Annotated[float, Field(ge=-MAX_FEATURE_MAGNITUDE, le=MAX_FEATURE_MAGNITUDE)]
Weight = Annotated[float, Field(ge=0.0, le=1e6)]
Tokens = Annotated[int, Field(ge=0, le=MAX_TOKENS)]


class Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class PreferenceIn(Request):
    """Weights on (quality, cost, latency), each >= 0, not all zero; normalised to sum 1."""

    quality: Weight = 0.0
    cost: Weight = 0.0
    latency: Weight = 0.0

    @model_validator(mode="after")
    def _not_all_zero(self) -> PreferenceIn:
        if self.quality + self.cost + self.latency <= 0:
            raise ValueError("preference weights must not all be zero")
        return self


class RouteRequest(Request):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"prompt": "Prove that the square root of 2 is irrational.", "cost_weight": 0.2},
                {
                    "prompt": "Summarise this support ticket in one line.",
                    "models": ["gpt-4o-mini", "llama-3.1-8b-instruct"],
                    "preference": {"quality": 0.5, "cost": 0.4, "latency": 0.1},
                    "tenant": "acme",
                },
            ]
        }
    )

    prompt: Annotated[Text, Field(max_length=MAX_PROMPT_CHARS)] | None = Field(
        None, description="The request's prompt; featurised here and never stored."
    )
    features: Annotated[list[Feature], Field(max_length=MAX_FEATURES)] | None = Field(
        None, description="Your own context vector (exactly feature_dim numbers), not a prompt."
    )
    models: Annotated[list[ModelName], Field(max_length=MAX_CANDIDATES)] | None = Field(
        None, description="Candidate models (each enabled in the catalog); default: all enabled."
    )
    preference: PreferenceIn | None = Field(
        None, description="Trade-off weights; or give cost_weight; default from the config."
    )
    cost_weight: Annotated[float, Field(ge=0.0, le=1.0)] | None = Field(
        None, description="Shorthand for preference (1 - c, c, 0)."
    )
    policy: Annotated[str, Field(max_length=200)] | None = Field(
        None, description="Which policy answers; default: the serving policy."
    )
    tenant: Identifier | None = Field(None, description="Logged with the decision.")


class ExpectedOut(BaseModel):
    quality: float
    cost: float = Field(description="USD")
    latency_ms: float


class RouteResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "decision_id": "5f0c9a7e2b2d4c55a1e0a4c3f1d2b6e7",
                    "model": "gpt-4o-mini",
                    "propensity": 0.975,
                    "probabilities": {"gpt-4o-mini": 0.975, "llama-3.1-8b-instruct": 0.025},
                    "policy": "linucb",
                    "policy_version": 1042,
                    "expected": {"quality": 0.81, "cost": 0.00026, "latency_ms": 0.0},
                }
            ]
        }
    )

    decision_id: str
    model: str
    propensity: float = Field(description="Probability the chosen model had; logged for learning.")
    probabilities: dict[str, float]
    policy: str
    policy_version: int = Field(description="Events the policy had learned from.")
    expected: ExpectedOut | None = Field(
        description="The policy's predicted outcome of the chosen model; null if it has no model."
    )


class FeedbackRequest(Request):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"decision_id": "5f0c9a7e2b2d4c55a1e0a4c3f1d2b6e7", "quality": 0.9},
                {
                    "decision_id": "5f0c9a7e2b2d4c55a1e0a4c3f1d2b6e7",
                    "quality": 0.6,
                    "cost": 0.0004,
                    "latency_ms": 850,
                    "feedback_id": "ticket-123-eval",
                },
            ]
        }
    )

    decision_id: Identifier
    quality: Annotated[float, Field(ge=0.0, le=1.0)]
    cost: Annotated[float, Field(ge=0.0)] | None = Field(
        None, description="USD; default: the chosen model's catalog price."
    )
    latency_ms: Annotated[float, Field(ge=0.0)] | None = None
    feedback_id: Identifier | None = Field(
        None, description="Idempotency key: a resent id is ignored. Default: a new id."
    )
    input_tokens: Tokens | None = Field(None, description="Prices a missing cost.")
    output_tokens: Tokens | None = Field(None, description="Prices a missing cost.")


class FeedbackAccepted(BaseModel):
    feedback_id: str
    decision_id: str
    status: Literal["accepted"] = "accepted"


class LoggedDecision(BaseModel):
    ts: float
    policy: str
    policy_version: int
    model: str
    propensity: float
    probabilities: dict[str, float]
    preference: dict[str, float]
    tenant: str | None


class DecisionResponse(BaseModel):
    decision_id: str
    state: Literal["pending", "applied", "dead_lettered"]
    reason: str | None = Field(None, description="Why it was dead-lettered.")
    feedback_id: str | None = Field(None, description="The feedback that was applied.")
    applied_at: float | None = None
    decision: LoggedDecision | None = Field(None, description="The decision as logged.")


class ModelIn(Request):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"price_in_per_m": 0.15, "price_out_per_m": 0.6, "enabled": True}]
        }
    )

    price_in_per_m: Annotated[float, Field(ge=0.0)] = Field(
        0.0, description="USD per 1M input tokens"
    )
    price_out_per_m: Annotated[float, Field(ge=0.0)] = Field(
        0.0, description="USD per 1M output tokens"
    )
    price_per_call: Annotated[float, Field(ge=0.0)] = Field(0.0, description="USD per call")
    enabled: bool = True
    typical_input_tokens: Annotated[int, Field(ge=0, le=MAX_TOKENS)] = 500
    typical_output_tokens: Annotated[int, Field(ge=0, le=MAX_TOKENS)] = 300
    prior_quality: Annotated[float, Field(ge=0.0, le=1.0)] | None = Field(
        None, description="Prior guess of its quality for the new arm (default 0.5)."
    )


class ModelOut(BaseModel):
    name: str
    price_in_per_m: float
    price_out_per_m: float
    price_per_call: float
    enabled: bool
    typical_input_tokens: int
    typical_output_tokens: int
    prior_quality: float | None


class ModelPut(ModelOut):
    created: bool


class PolicyOut(BaseModel):
    name: str
    version: int = Field(description="Live version: events learned so far.")
    events_learned: int
    snapshot_version: int | None = Field(description="Newest committed snapshot.")
    serving: bool
    arms: list[str]
    content_model: dict[str, bool] | None = Field(
        description="Linear policies: per outcome (quality, cost, latency), whether the model of "
        "the prompt's hashed n-grams predicts it (true) or the fallback on the dense signals does "
        "(false, until the content model predicts better); null for other policies."
    )


class ServingPolicyIn(Request):
    model_config = ConfigDict(json_schema_extra={"examples": [{"policy": "lints"}]})

    policy: Identifier = Field(description="A learning policy's name (see GET /v1/policies).")


class ServingPolicyOut(BaseModel):
    policy: str = Field(description="The policy serving from now on.")
    previous: str = Field(description="The policy that served before.")


class StatsOut(BaseModel):
    decisions: int
    feedback_received: int
    feedback_applied: int
    dead_letters: int
    pending_decisions: int
    waiting_feedback: int
    policy_version: int


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    ready: bool
    database: str = Field(examples=["ok"])
    learner: str = Field(description="ok, standby, external (another process), or why not")
    bus: str = Field(
        examples=["ok"],
        description="ok, or degraded while events wait in the outbox for the broker",
    )


class ErrorOut(BaseModel):
    detail: str = Field(examples=["quality: Input should be less than or equal to 1"])


def model_out(model: Any) -> ModelOut:
    """The API view of a `CatalogModel`."""
    return ModelOut.model_validate(model, from_attributes=True)
