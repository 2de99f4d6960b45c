"""The model catalog: validation, call-cost arithmetic, the default cost scale, the demo catalog."""

from __future__ import annotations

import dataclasses
import math

import pytest

from bandit_router.catalog import (
    DEMO_CATALOG,
    CatalogError,
    CatalogModel,
    call_cost,
    default_cost_scale,
    typical_cost,
)

GPT4 = CatalogModel("gpt-4-1106-preview", price_in_per_m=10.0, price_out_per_m=30.0)


def test_call_cost_is_per_million_token_prices_plus_the_flat_fee() -> None:
    assert call_cost(GPT4, 1000, 500) == pytest.approx(0.010 + 0.015, abs=1e-15)
    flat = CatalogModel("flat", price_in_per_m=2.0, price_out_per_m=8.0, price_per_call=0.001)
    assert call_cost(flat, 250_000, 125_000) == pytest.approx(0.001 + 0.5 + 1.0, abs=1e-12)
    assert call_cost(flat, 0, 0) == 0.001
    assert call_cost(CatalogModel("local-free"), 10_000, 10_000) == 0.0


def test_call_cost_rejects_negative_token_counts() -> None:
    with pytest.raises(CatalogError, match="token counts must be >= 0"):
        call_cost(GPT4, -1, 10)


def test_typical_cost_uses_the_model_typical_token_counts() -> None:
    # Defaults: 500 input and 300 output tokens.
    assert typical_cost(GPT4) == pytest.approx(500 * 10 / 1e6 + 300 * 30 / 1e6, abs=1e-15)
    assert typical_cost(GPT4) == pytest.approx(0.014, abs=1e-15)
    chatty = dataclasses.replace(GPT4, typical_input_tokens=2000, typical_output_tokens=1000)
    assert typical_cost(chatty) == pytest.approx(0.02 + 0.03, abs=1e-15)


def test_default_cost_scale_is_the_largest_typical_cost_with_a_floor() -> None:
    assert default_cost_scale(DEMO_CATALOG) == pytest.approx(0.014, abs=1e-15)  # GPT-4 Turbo
    assert default_cost_scale(DEMO_CATALOG[1:]) == pytest.approx(
        500 * 3 / 1e6 + 300 * 15 / 1e6, abs=1e-15
    )  # Claude 3.5 Sonnet: 0.006
    assert default_cost_scale([CatalogModel("free-a"), CatalogModel("free-b")]) == 1e-6
    assert default_cost_scale([]) == 1e-6
    tiny = CatalogModel("tiny", price_per_call=1e-9)
    assert default_cost_scale([tiny]) == 1e-6


def test_demo_catalog_has_the_real_data_models_at_their_real_prices() -> None:
    by_name = {model.name: model for model in DEMO_CATALOG}
    assert len(by_name) == len(DEMO_CATALOG) == 6
    assert (
        by_name["gpt-4-1106-preview"].price_in_per_m,
        by_name["gpt-4-1106-preview"].price_out_per_m,
    ) == (
        10.0,
        30.0,
    )
    mixtral = by_name["mixtral-8x7b-instruct"]
    assert (mixtral.price_in_per_m, mixtral.price_out_per_m) == (0.6, 0.6)
    assert typical_cost(mixtral) == pytest.approx(800 * 0.6 / 1e6, abs=1e-15)
    assert {"gpt-4o-mini", "claude-3-5-haiku", "llama-3.1-8b-instruct", "claude-3-5-sonnet"} <= set(
        by_name
    )
    assert all(model.enabled for model in DEMO_CATALOG)


@pytest.mark.parametrize(
    "name", ["a", "gpt-4o-mini", "meta/llama-3.1-8b@vllm:v2", "A_b.C-d", "x" * 200]
)
def test_valid_names(name: str) -> None:
    assert CatalogModel(name).name == name


@pytest.mark.parametrize("name", ["", "x" * 201, "has space", "naïve", "semi;colon", "new\nline"])
def test_invalid_names_are_rejected_with_the_allowed_alphabet(name: str) -> None:
    with pytest.raises(CatalogError, match=r"1-200 characters from A-Z a-z 0-9 \. _ : / @ -"):
        CatalogModel(name)


@pytest.mark.parametrize("field", ["price_in_per_m", "price_out_per_m", "price_per_call"])
@pytest.mark.parametrize("price", [-0.01, math.nan, math.inf, "1.0", True])
def test_prices_must_be_finite_and_non_negative(field: str, price: object) -> None:
    with pytest.raises(CatalogError, match=f"{field} of m must be a finite number >= 0"):
        CatalogModel("m", **{field: price})


def test_other_fields_are_validated() -> None:
    with pytest.raises(CatalogError, match="typical_input_tokens of m must be an integer >= 0"):
        CatalogModel("m", typical_input_tokens=-1)
    with pytest.raises(CatalogError, match="typical_output_tokens of m must be an integer >= 0"):
        CatalogModel("m", typical_output_tokens=2.5)  # type: ignore[arg-type]
    with pytest.raises(CatalogError, match=r"prior_quality of m must be in \[0, 1\]"):
        CatalogModel("m", prior_quality=1.5)
    with pytest.raises(CatalogError, match="enabled of m must be true or false"):
        CatalogModel("m", enabled=1)  # type: ignore[arg-type]
    assert CatalogModel("m", prior_quality=0.0).prior_quality == 0.0


def test_models_are_immutable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        GPT4.price_in_per_m = 0.0  # type: ignore[misc]
