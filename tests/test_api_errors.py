"""Every bad input is a 4xx JSON ``{"detail": "<field>: ..."}`` naming the field, never a 500."""

from __future__ import annotations

import pytest

from tests.api_support import running_app, settings_for

PROMPT = {"prompt": "What is 2 + 2?"}

# (method, path, JSON body or raw text, status, the field the message must name)
CASES = [
    ("post", "/v1/route", '{"prompt": "hi",', 422, "body"),
    ("post", "/v1/route", "[1, 2]", 422, "body"),
    ("post", "/v1/route", PROMPT | {"models": ["gpt-5-ultra"]}, 422, "models"),
    ("post", "/v1/route", PROMPT | {"models": []}, 422, "models"),
    ("post", "/v1/route", PROMPT | {"models": ["gpt-4o-mini", "gpt-4o-mini"]}, 422, "models"),
    ("post", "/v1/route", PROMPT | {"policy": "oracle"}, 422, "policy"),
    ("post", "/v1/route", PROMPT | {"cost_weight": 1.5}, 422, "cost_weight"),
    ("post", "/v1/route", PROMPT | {"cost_weight": -0.1}, 422, "cost_weight"),
    (
        "post",
        "/v1/route",
        PROMPT | {"cost_weight": 0.5, "preference": {"quality": 1.0}},
        422,
        "cost_weight",
    ),
    ("post", "/v1/route", PROMPT | {"preference": {"quality": 0, "cost": 0}}, 422, "preference"),
    ("post", "/v1/route", PROMPT | {"preference": {"cost": -1}}, 422, "preference.cost"),
    ("post", "/v1/route", PROMPT | {"cost_weigth": 0.5}, 422, "cost_weigth"),
    ("post", "/v1/route", {"features": [0.1] * 63}, 422, "features"),
    ("post", "/v1/route", {"features": [1e9] + [0.0] * 63}, 422, "features.0"),
    ("post", "/v1/route", PROMPT | {"features": [0.0] * 64}, 422, "prompt"),
    ("post", "/v1/route", {"cost_weight": 0.5}, 422, "prompt"),
    ("post", "/v1/route", {"prompt": 42}, 422, "prompt"),
    ("post", "/v1/route", PROMPT | {"tenant": ""}, 422, "tenant"),
    ("post", "/v1/feedback", {"decision_id": "d", "quality": 1.5}, 422, "quality"),
    ("post", "/v1/feedback", {"decision_id": "d", "quality": -0.5}, 422, "quality"),
    ("post", "/v1/feedback", {"decision_id": "d", "quality": "0.5"}, 422, "quality"),
    ("post", "/v1/feedback", {"decision_id": "d", "quality": 0.5, "cost": -1}, 422, "cost"),
    (
        "post",
        "/v1/feedback",
        {"decision_id": "d", "quality": 0.5, "latency_ms": -3},
        422,
        "latency_ms",
    ),
    ("post", "/v1/feedback", {"quality": 0.5}, 422, "decision_id"),
    ("post", "/v1/feedback", {"decision_id": "never-routed", "quality": 0.5}, 404, "decision_id"),
    ("post", "/v1/feedback", "quality=0.5", 422, "body"),
    ("post", "/v1/feedback", "", 422, "body"),
    ("post", "/v1/route", '"just a string"', 422, "body"),
    ("get", "/v1/decisions/never-routed", None, 404, "decision_id"),
    ("get", "/v1/decisions/" + "x" * 201, None, 422, "decision_id"),
    ("get", "/v1/models/gpt-5-ultra", None, 404, "name"),
    ("delete", "/v1/models/gpt-5-ultra", None, 404, "name"),
    ("put", "/v1/models/bad name!", {"price_in_per_m": 1.0}, 422, "name"),
    ("put", "/v1/models/m1", {"price_in_per_m": -1.0}, 422, "price_in_per_m"),
    ("put", "/v1/models/m1", {"prior_quality": 2}, 422, "prior_quality"),
    ("put", "/v1/models/m1", {"enabled": "yes"}, 422, "enabled"),
]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with running_app(settings_for(tmp_path_factory.mktemp("errors"))) as client:
        yield client


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "field"),
    CASES,
    ids=[f"{c[0]} {c[1][:30]} {c[4]}" for c in CASES],
)
def test_bad_input_is_a_4xx_naming_the_field(client, method, path, body, status, field):
    if isinstance(body, str):
        response = client.request(
            method, path, content=body, headers={"content-type": "application/json"}
        )
    else:
        response = client.request(method, path, json=body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    assert detail.startswith(f"{field}:") or f"; {field}:" in detail, detail


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_json_body_under_another_content_type_is_a_422_that_says_so(client, content_type):
    headers = {} if content_type is None else {"content-type": content_type}
    response = client.post("/v1/route", content=b'{"prompt": "hi"}', headers=headers)
    assert response.status_code == 422, response.text
    assert response.json()["detail"] == (
        "body: must be a JSON object, sent with Content-Type: application/json"
    )


def test_a_json_subtype_content_type_is_read_as_json(client):
    response = client.post(
        "/v1/route", content=b'{"prompt": "hi"}', headers={"content-type": "application/vnd.api+json"}
    )
    assert response.status_code == 200, response.text
