"""The HTTP API in process: route -> feedback -> learned, the catalog at run time, decision states,
privacy of prompts, health and metrics."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from bandit_router.catalog import DEMO_CATALOG, call_cost, typical_cost
from streams import TOPIC_DECISIONS, TOPIC_FEEDBACK, decode
from tests.api_support import applied, running_app, settings_for, wait_for

PROMPT = "Prove that there are infinitely many primes."


@pytest.fixture
def client(tmp_path):
    with running_app(settings_for(tmp_path)) as client:
        yield client


def service_of(client):
    return client.app.state.service


def test_route_answers_with_a_model_and_logs_the_decision(client):
    response = client.post("/v1/route", json={"prompt": PROMPT, "cost_weight": 0.3})
    assert response.status_code == 200
    body = response.json()
    names = {model.name for model in DEMO_CATALOG}
    assert body["model"] in names and set(body["probabilities"]) == names
    assert body["propensity"] == body["probabilities"][body["model"]]
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-9)
    assert min(body["probabilities"].values()) >= 0.005  # the exploration floor
    assert body["policy"] == "linucb" and body["policy_version"] == 0
    assert set(body["expected"]) == {"quality", "cost", "latency_ms"}
    [record] = service_of(client).bus.inner.find(TOPIC_DECISIONS, body["decision_id"])
    event = decode(record.value)
    assert event.chosen == body["model"] and event.preference == (0.7, 0.3, 0.0)


def test_feedback_is_applied_and_moves_the_estimate_toward_it(client):
    model = "gpt-4o-mini"
    first = client.post("/v1/route", json={"prompt": PROMPT, "models": [model]}).json()
    assert first["model"] == model and first["policy_version"] == 0
    before = first["expected"]["quality"]
    assert before == pytest.approx(0.5, abs=1e-6)  # the catalog prior

    response = client.post(
        "/v1/feedback", json={"decision_id": first["decision_id"], "quality": 1.0}
    )
    assert response.status_code == 202
    feedback_id = response.json()["feedback_id"]
    wait_for(applied(client, 1))

    second = client.post("/v1/route", json={"prompt": PROMPT, "models": [model]}).json()
    assert second["policy_version"] == 1
    after = second["expected"]["quality"]
    assert before < after <= 1.0  # moved toward the reported 1.0
    policies = client.get("/v1/policies").json()
    assert [p["version"] for p in policies] == [1, 1, 1, 1]
    # One event: the content model has not yet predicted anything better than the fallback.
    content = {p["name"]: p["content_model"] for p in policies}
    assert content["linucb"] == content["lints"] == {"quality": False, "cost": False, "latency": False}
    assert content["random"] is None
    state = client.get(f"/v1/decisions/{first['decision_id']}").json()
    assert state["state"] == "applied" and state["feedback_id"] == feedback_id
    assert state["decision"]["model"] == model
    stats = client.get("/v1/stats").json()
    assert stats["policy_version"] == 1 and stats["feedback_applied"] == 1


def test_missing_cost_is_priced_from_the_catalog(client):
    model = "claude-3-5-haiku"
    decision = client.post("/v1/route", json={"prompt": PROMPT, "models": [model]}).json()
    client.post(
        "/v1/feedback",
        json={
            "decision_id": decision["decision_id"],
            "quality": 0.8,
            "input_tokens": 1200,
            "output_tokens": 400,
            "feedback_id": "f-priced",
        },
    )
    [record] = service_of(client).bus.inner.find(TOPIC_FEEDBACK, decision["decision_id"])
    catalog = {m.name: m for m in DEMO_CATALOG}
    assert decode(record.value).cost == pytest.approx(call_cost(catalog[model], 1200, 400))


def test_feedback_finds_a_decision_routed_before_a_restart(tmp_path):
    """Recent decisions' models are kept in memory; older ones (here: from before a restart)
    are looked up in the log, priced the same, and unknown ones are still refused."""
    settings = settings_for(tmp_path)
    model = "claude-3-5-haiku"
    with running_app(settings) as first:
        before = first.post("/v1/route", json={"prompt": PROMPT, "models": [model]}).json()
    with running_app(settings) as client:
        now = client.post("/v1/route", json={"prompt": PROMPT, "models": [model]}).json()
        for decision in (before, now):
            body = {"decision_id": decision["decision_id"], "quality": 0.5}
            assert client.post("/v1/feedback", json=body).status_code == 202
        costs = [
            decode(r.value).cost
            for d in (before, now)
            for r in service_of(client).bus.inner.find(TOPIC_FEEDBACK, d["decision_id"])
        ]
        catalog = {m.name: m for m in DEMO_CATALOG}
        assert costs == pytest.approx([typical_cost(catalog[model])] * 2)
        missing = client.post("/v1/feedback", json={"decision_id": "never-routed", "quality": 1})
        assert missing.status_code == 404


def test_resent_feedback_is_applied_once_and_a_second_one_is_dead_lettered(client):
    decision = client.post("/v1/route", json={"prompt": PROMPT}).json()["decision_id"]
    for _ in range(3):
        body = {"decision_id": decision, "quality": 0.9, "feedback_id": "same"}
        assert client.post("/v1/feedback", json=body).status_code == 202
    other = {"decision_id": decision, "quality": 0.1, "feedback_id": "other"}
    assert client.post("/v1/feedback", json=other).status_code == 202
    stats = wait_for(
        lambda: (s := client.get("/v1/stats").json())["feedback_received"] == 4 and s
    )
    assert stats["feedback_applied"] == 1 and stats["dead_letters"] == 1
    assert stats["policy_version"] == 1


def test_catalog_changes_at_run_time(client):
    created = client.put(
        "/v1/models/acme/tiny-1",
        json={"price_in_per_m": 0.01, "price_out_per_m": 0.02, "prior_quality": 0.9},
    )
    assert created.status_code == 201 and created.json()["created"] is True
    route = client.post("/v1/route", json={"prompt": PROMPT, "models": ["acme/tiny-1"]})
    assert route.status_code == 200
    assert route.json()["expected"]["quality"] == pytest.approx(0.9, abs=1e-6)  # the prior
    everyone = client.post("/v1/route", json={"prompt": PROMPT}).json()["probabilities"]
    assert "acme/tiny-1" in everyone
    arms = {p["name"]: p["arms"] for p in client.get("/v1/policies").json()}
    assert all("acme/tiny-1" in names for names in arms.values())

    replaced = client.put("/v1/models/acme/tiny-1", json={"price_in_per_m": 0.02})
    assert replaced.status_code == 200 and replaced.json()["created"] is False
    assert client.delete("/v1/models/acme/tiny-1").status_code == 204
    assert client.get("/v1/models/acme/tiny-1").status_code == 404
    assert "acme/tiny-1" not in client.post("/v1/route", json={"prompt": PROMPT}).json()[
        "probabilities"
    ]
    refused = client.post("/v1/route", json={"prompt": PROMPT, "models": ["acme/tiny-1"]})
    assert refused.status_code == 422 and "models:" in refused.json()["detail"]
    # Its arm and history stay; it is listed as removed.
    arms = {p["name"]: p["arms"] for p in client.get("/v1/policies").json()}
    assert all("acme/tiny-1" in names for names in arms.values())
    listed = client.get("/v1/models", params={"include_removed": True}).json()
    assert "acme/tiny-1" in {m["name"] for m in listed}
    assert "acme/tiny-1" not in {m["name"] for m in client.get("/v1/models").json()}


def test_no_enabled_model_is_a_conflict(client):
    for model in DEMO_CATALOG:
        client.put(f"/v1/models/{model.name}", json={"enabled": False})
    response = client.post("/v1/route", json={"prompt": PROMPT})
    assert response.status_code == 409 and response.json()["detail"].startswith("models:")


def test_decision_states_pending_applied_dead_lettered(client):
    service = service_of(client)
    decision = client.post("/v1/route", json={"prompt": PROMPT}).json()["decision_id"]
    assert client.get(f"/v1/decisions/{decision}").json()["state"] == "pending"
    client.post("/v1/feedback", json={"decision_id": decision, "quality": 0.5})
    wait_for(lambda: client.get(f"/v1/decisions/{decision}").json()["state"] == "applied")

    service.bus.publish(TOPIC_DECISIONS, "broken-1", b'{"schema":"decision/9"}')
    state = wait_for(
        lambda: (s := client.get("/v1/decisions/broken-1").json()).get("state") == "dead_lettered"
        and s
    )
    assert "unknown schema 'decision/9'" in state["reason"]
    missing = client.get("/v1/decisions/never-routed")
    assert missing.status_code == 404 and missing.json()["detail"].startswith("decision_id:")


def test_prompts_are_not_stored_unless_asked(tmp_path):
    secret = "zebra-quokka-7731 please summarise my medical record"
    for keep, folder in ((False, tmp_path / "private"), (True, tmp_path / "debug")):
        folder.mkdir()
        with running_app(settings_for(folder, keep_prompts=keep)) as client:
            decision = client.post("/v1/route", json={"prompt": secret}).json()["decision_id"]
            client.post("/v1/feedback", json={"decision_id": decision, "quality": 0.5})
            wait_for(applied(client, 1))
        stored = _all_text(folder / "router.db")
        assert ("zebra-quokka-7731" in stored) is keep


def _all_text(database: Path) -> str:
    with sqlite3.connect(database) as connection:
        query = "select name from sqlite_master where type = 'table'"
        tables = [row[0] for row in connection.execute(query)]
        chunks = []
        for table in tables:
            for row in connection.execute(f'select * from "{table}"'):
                chunks.extend(
                    value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
                    for value in row
                )
    return "\n".join(chunks)


def test_own_features_instead_of_a_prompt(client):
    x = np.zeros(64)
    x[[3, 60]] = [0.5, 1.0]
    body = client.post("/v1/route", json={"features": x.tolist(), "cost_weight": 0.5}).json()
    [record] = service_of(client).bus.inner.find(TOPIC_DECISIONS, body["decision_id"])
    features = decode(record.value).features
    assert features.indices == (3, 60) and features.values == (0.5, 1.0)


def test_health_readiness_and_metrics(tmp_path):
    (tmp_path / "second").mkdir()
    with running_app(settings_for(tmp_path)) as client, running_app(
        settings_for(tmp_path / "second")
    ) as second:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").json() == {"ready": True, "database": "ok", "learner": "ok", "bus": "ok"}
        decision = client.post("/v1/route", json={"prompt": PROMPT, "policy": "random"}).json()
        client.post("/v1/feedback", json={"decision_id": decision["decision_id"], "quality": 1})
        wait_for(applied(client, 1))
        text = client.get("/metrics").text
        model = decision["model"]
        assert f'bandit_router_routes_total{{model="{model}",policy="random"}} 1.0' in text
        assert "bandit_router_route_seconds_count 1.0" in text
        assert "bandit_router_feedback_total 1.0" in text
        assert 'bandit_router_policy_version{policy="linucb"} 1.0' in text
        assert "bandit_router_feedback_applied_total 1.0" in text
        # A second app in the same process keeps its own registry.
        assert "bandit_router_route_seconds_count 0.0" in second.get("/metrics").text

        service = service_of(client)
        service.learner_thread.stop()
        not_ready = client.get("/readyz")
        assert not_ready.status_code == 503 and not_ready.json()["ready"] is False
