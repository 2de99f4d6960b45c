"""Switching the serving policy over HTTP: immediate, validated, stored across restarts."""

from __future__ import annotations

from tests.api_support import running_app, settings_for

PROMPT = "Translate 'good morning' into French."


def test_put_serving_policy_switches_at_once_and_survives_a_restart(tmp_path):
    settings = settings_for(tmp_path, policies=["linucb", "lints", "random"])
    with running_app(settings) as client:
        assert client.post("/v1/route", json={"prompt": PROMPT}).json()["policy"] == "linucb"
        response = client.put("/v1/policies/serving", json={"policy": "lints"})
        assert response.status_code == 200
        assert response.json() == {"policy": "lints", "previous": "linucb"}
        assert client.post("/v1/route", json={"prompt": PROMPT}).json()["policy"] == "lints"
        serving = [p["name"] for p in client.get("/v1/policies").json() if p["serving"]]
        assert serving == ["lints"]
    with running_app(settings) as client:  # a new process on the same database
        assert client.post("/v1/route", json={"prompt": PROMPT}).json()["policy"] == "lints"


def test_put_serving_policy_refuses_unknown_and_non_learning_policies(tmp_path):
    with running_app(settings_for(tmp_path, policies=["linucb", "random"])) as client:
        for body, message in (
            ({"policy": "magic"}, "policy: unknown policy 'magic'; choose from linucb, random"),
            ({"policy": "lints"}, "policy: policy 'lints' does not learn in this deployment"),
            ({"policy": ""}, "policy: String should have at least 1 character"),
            ({}, "policy: Field required"),
            ({"policy": "random", "extra": 1}, "extra: unknown field"),
        ):
            response = client.put("/v1/policies/serving", json=body)
            assert response.status_code == 422, body
            assert response.json()["detail"].startswith(message), response.json()
        assert client.post("/v1/route", json={"prompt": PROMPT}).json()["policy"] == "linucb"
