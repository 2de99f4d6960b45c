"""The model catalog: which LLMs the router may choose and what a call to each costs.

Pure domain logic (no I/O); `bandit_router.storage` persists it.

>>> round(call_cost(CatalogModel("m", price_in_per_m=10, price_out_per_m=30), 1000, 500), 6)
0.025
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

TOKENS_PER_PRICE_UNIT = 1_000_000  # list prices are quoted in USD per 1M tokens
MIN_COST_SCALE = 1e-6  # USD; keeps cost / cost_scale finite when every model is free
MODEL_NAME = re.compile(r"[A-Za-z0-9._:/@-]{1,200}")


class CatalogError(ValueError):
    """A catalog entry is invalid; the message names the field and what is allowed."""


@dataclass(frozen=True)
class CatalogModel:
    """One routable LLM and its prices (USD).

    A call costs ``price_per_call + input_tokens * price_in_per_m / 1e6
    + output_tokens * price_out_per_m / 1e6``. All prices may be zero (a free local model).
    ``typical_*_tokens`` estimate a call's cost when feedback omits it and no token counts are
    given; ``prior_quality`` (in [0, 1]) is an optional prior for a newly added arm.
    """

    name: str
    price_in_per_m: float = 0.0
    price_out_per_m: float = 0.0
    price_per_call: float = 0.0
    enabled: bool = True
    typical_input_tokens: int = 500
    typical_output_tokens: int = 300
    prior_quality: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not MODEL_NAME.fullmatch(self.name):
            raise CatalogError(
                f"model name {self.name!r} is invalid: use 1-200 characters from "
                "A-Z a-z 0-9 . _ : / @ -"
            )
        for field in ("price_in_per_m", "price_out_per_m", "price_per_call"):
            price = getattr(self, field)
            if not _is_number(price) or not math.isfinite(price) or price < 0:
                raise CatalogError(
                    f"{field} of {self.name} must be a finite number >= 0, got {price!r}"
                )
        if not isinstance(self.enabled, bool):
            raise CatalogError(
                f"enabled of {self.name} must be true or false, got {self.enabled!r}"
            )
        for field in ("typical_input_tokens", "typical_output_tokens"):
            tokens = getattr(self, field)
            if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
                raise CatalogError(
                    f"{field} of {self.name} must be an integer >= 0, got {tokens!r}"
                )
        quality = self.prior_quality
        if quality is not None and not (_is_number(quality) and 0.0 <= quality <= 1.0):
            raise CatalogError(
                f"prior_quality of {self.name} must be in [0, 1] or absent, got {quality!r}"
            )


def call_cost(model: CatalogModel, input_tokens: int, output_tokens: int) -> float:
    """USD cost of one call to ``model`` with these token counts."""
    if input_tokens < 0 or output_tokens < 0:
        raise CatalogError(
            f"token counts must be >= 0, got input {input_tokens}, output {output_tokens}"
        )
    return (
        model.price_per_call
        + input_tokens * model.price_in_per_m / TOKENS_PER_PRICE_UNIT
        + output_tokens * model.price_out_per_m / TOKENS_PER_PRICE_UNIT
    )


def typical_cost(model: CatalogModel) -> float:
    """USD cost of a call of typical length (the model's ``typical_*_tokens``)."""
    return call_cost(model, model.typical_input_tokens, model.typical_output_tokens)


def default_cost_scale(models: Iterable[CatalogModel]) -> float:
    """The utility's default cost scale: the largest typical call cost, never below 1e-6 USD."""
    return max([MIN_COST_SCALE, *(typical_cost(model) for model in models)])


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# Public list prices (USD per 1M input / output tokens). The first two are the models of the real
# routing data under data/, priced as in data/README.md.
DEMO_CATALOG: tuple[CatalogModel, ...] = (
    CatalogModel("gpt-4-1106-preview", price_in_per_m=10.00, price_out_per_m=30.00),
    CatalogModel("mixtral-8x7b-instruct", price_in_per_m=0.60, price_out_per_m=0.60),
    CatalogModel("gpt-4o-mini", price_in_per_m=0.15, price_out_per_m=0.60),
    CatalogModel("claude-3-5-haiku", price_in_per_m=0.80, price_out_per_m=4.00),
    CatalogModel("llama-3.1-8b-instruct", price_in_per_m=0.05, price_out_per_m=0.08),
    CatalogModel("claude-3-5-sonnet", price_in_per_m=3.00, price_out_per_m=15.00),
)
