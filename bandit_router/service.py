"""The router service without HTTP: route a request, accept feedback, report decisions, the
catalog, the policies and the totals. `bandit_router.api` is a thin shell over it.

The bus and the database engine are injected (embedded: SQLite and its log table; distributed:
Kafka and Postgres), so the same code paths serve both deployments. Three ways to run:

- embedded (bus = 'embedded'): the learner runs in this process and the API routes with the
  very policies it updates;
- distributed with a learner (bus = 'kafka'): an `ActiveLearner` runs in this process (active or
  standing by), and the API routes with its own copy of the policies, reloaded from the newest
  snapshots every ``reload_every_s``, like every other replica;
- a replica (``run_learner=False``): no learner; reloads snapshots only.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
from sqlalchemy import Engine, text

from bandit_router.catalog import (
    DEMO_CATALOG,
    CatalogError,
    CatalogModel,
    call_cost,
    typical_cost,
)
from bandit_router.config import ConfigError, Settings
from bandit_router.decision_lookup import DecisionLookup, decision_body
from bandit_router.featurizer import Featurizer
from bandit_router.learner import GROUP, Learner
from bandit_router.learner_runner import ActiveLearner, LearnerThread, learner_id
from bandit_router.policy_factory import POLICY_NAMES
from bandit_router.policy_set import PolicySet, prior_outcome, restore_policy
from bandit_router.route_request import (
    request_candidates,
    request_context,
    request_policy,
    request_preference,
)
from bandit_router.service_errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    ServiceError,
    field_of,
)
from bandit_router.storage import Storage, make_engine, prepare_schema
from bandit_router.tracking import LearnerTracker
from policies import OBJECTIVES, LinearPolicy, Preference
from streams import (
    TOPIC_DECISIONS,
    TOPIC_FEEDBACK,
    Bus,
    DecisionEvent,
    EventError,
    FeedbackEvent,
    SparseFeatures,
    encode,
)
from streams.embedded import EmbeddedBus
from streams.outbox import OutboxBus

log = logging.getLogger(__name__)

SERVING_POLICY = "serving_policy"  # the service_config key of the operator's serving choice


@dataclass(frozen=True)
class Expected:
    """The serving policy's predicted outcome of the chosen model (quality, USD, ms)."""

    quality: float
    cost: float
    latency_ms: float


@dataclass(frozen=True)
class RouteResult:
    decision_id: str
    model: str
    propensity: float
    probabilities: dict[str, float]
    policy: str
    policy_version: int
    expected: Expected | None


@dataclass(frozen=True)
class DecisionInfo:
    decision_id: str
    state: str  # pending | applied | dead_lettered
    decision: dict[str, Any] | None  # the logged event, if the bus can look it up
    detail: dict[str, Any]


class RouterService:
    """Routes requests with the policies of a `PolicySet` and logs every decision to the bus.

    Thread-safe: request threads and the learner share the policies under ``policies.lock``;
    sampling uses one seeded generator under the same lock.
    """

    def __init__(
        self,
        settings: Settings,
        storage: Storage,
        bus: Bus,
        featurizer: Featurizer,
        policies: PolicySet,
        *,
        engine: Engine | None = None,
        learner: Learner | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.bus = bus
        self.featurizer = featurizer
        self.policies = policies
        self.engine = engine
        self.learner = learner
        self.learner_thread: LearnerThread | None = None
        self.active_learner: ActiveLearner | None = None
        self._reloader: threading.Thread | None = None
        self._stopping = threading.Event()
        self._clock = clock
        self._rng = np.random.default_rng(settings.seed)
        self._catalog = {model.name: model for model in storage.list_models()}
        self._owns_engine = False
        self._decisions = DecisionLookup(bus)

    @classmethod
    def open(
        cls,
        settings: Settings,
        *,
        engine: Engine | None = None,
        bus: Bus | None = None,
        seed_models: Iterable[CatalogModel] = DEMO_CATALOG,
        run_learner: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> RouterService:
        """The service on the database at ``settings.database_url`` (SQLite is migrated here,
        any other database must already be current) and the bus of ``settings.bus`` behind a
        durable outbox; the catalog seeded with ``seed_models`` if it never held a model. The
        learner (started by `start`) resumes from its last checkpoint; ``run_learner=False``
        makes an API replica that only reloads snapshots."""
        owns_engine = engine is None
        engine = engine or make_engine(settings.database_url)
        prepare_schema(engine)
        storage = Storage(engine, clock)
        storage.seed_catalog(seed_models)
        bus = OutboxBus(bus or open_bus(settings, engine, clock), engine, clock=clock)
        featurizer = Featurizer(settings.feature_dim)
        tracker = LearnerTracker.for_learner(settings, storage, GROUP) if run_learner else None
        learner = None
        if run_learner and settings.bus == "embedded":
            # One process owns an embedded database: it may take the lease over at once.
            lease = storage.acquire_lease(
                GROUP, learner_id(), settings.learner_lease_s, take_over=True
            )
            learner = Learner.open(
                settings, storage, bus, featurizer, lease=lease, clock=clock, tracker=tracker
            )
            policies = learner.policies
        else:
            snapshots = storage.newest_snapshots(settings.policies)
            policies = PolicySet.load(settings, featurizer, storage.list_models(), snapshots)
        use_stored_serving_policy(policies, storage)
        service = cls(
            settings,
            storage,
            bus,
            featurizer,
            policies,
            engine=engine,
            learner=learner,
            clock=clock,
        )
        if run_learner and learner is None:
            service.active_learner = ActiveLearner(
                settings, storage, bus, featurizer, tracker=tracker, clock=clock
            )
        service._owns_engine = owns_engine
        return service

    def start(self) -> None:
        """Start the learner in a background thread (if this service has one), and the snapshot
        reloader if the API does not share the learner's policies."""
        if self.learner_thread is not None:
            return
        if self.learner is not None:
            self.learner_thread = LearnerThread(self.learner.run_forever)
        elif self.active_learner is not None:
            self.learner_thread = LearnerThread(self.active_learner.run)
        if self.learner_thread is not None:
            self.learner_thread.start()
        if self.learner is None:
            self._reloader = threading.Thread(
                target=self._reload_loop, name="bandit-router-reload", daemon=True
            )
            self._reloader.start()

    def close(self) -> None:
        """Stop the learner after its final commit, the reloader, and release the bus."""
        self._stopping.set()
        if self.learner_thread is not None:
            self.learner_thread.stop()
        elif self.learner is not None and self.learner.tracker is not None:
            self.learner.tracker.close()  # the learner never ran, so never closed its run
        if self._reloader is not None:
            self._reloader.join(timeout=10)
        self.bus.close()
        if self._owns_engine and self.engine is not None:
            self.engine.dispose()

    @property
    def running_learner(self) -> Learner | None:
        """The learner working in this process right now (None for a replica or a standby)."""
        if self.learner is not None:
            return self.learner
        return None if self.active_learner is None else self.active_learner.learner

    # --- snapshot reload (replicas) ------------------------------------------------------------
    def reload(self) -> list[str]:
        """Swap in every policy whose newest stored snapshot is newer than the live one, and
        pick up catalog and serving-policy changes other replicas made; returns the reloaded
        policies' names."""
        stored = self.storage.snapshot_versions()
        with self.policies.lock:
            stale = [n for n, p in self.policies.items() if stored.get(n, -1) > p.updates]
        fresh = {
            name: restore_policy(name, snapshot.state, self.featurizer)
            for name, snapshot in self.storage.newest_snapshots(stale).items()
        } if stale else {}
        catalog = {model.name: model for model in self.storage.list_models()}
        serving = self.storage.config_value(SERVING_POLICY)
        with self.policies.lock:
            self.policies.policies.update(fresh)
            if serving in self.policies:  # another replica switched it (PUT /v1/policies/serving)
                self.policies.serving = serving
            for model in catalog.values():
                self.policies.ensure_arm(model.name, prior_outcome(model))
            self._catalog = dict(sorted(catalog.items()))
        return sorted(fresh)

    def _reload_loop(self) -> None:
        while not self._stopping.wait(self.settings.reload_every_s):
            try:
                self.reload()
            except Exception:  # the database may be briefly away; keep serving what we have
                log.exception("reloading policy snapshots failed; retrying")

    # --- route -----------------------------------------------------------------------------------
    def route(self, **request: Any) -> RouteResult:
        """Pick a model for one request and log the decision durably before answering
        (the arguments of `decide`)."""
        result, payload = self.decide(**request)
        self.bus.publish(TOPIC_DECISIONS, result.decision_id, payload)
        self._logged(result)
        return result

    async def route_async(self, **request: Any) -> RouteResult:
        """`route` for the API's event loop: the CPU work runs inline, the durable write is
        awaited (`Bus.publish_async`), so no thread hand-off and no blocking on a commit."""
        result, payload = self.decide(**request)
        await self.bus.publish_async(TOPIC_DECISIONS, result.decision_id, payload)
        self._logged(result)
        return result

    def _logged(self, result: RouteResult) -> None:
        self._decisions.remember(result.decision_id, result.model)

    def decide(
        self,
        *,
        prompt: str | None = None,
        features: Sequence[float] | None = None,
        models: Sequence[str] | None = None,
        preference: Preference | None = None,
        cost_weight: float | None = None,
        policy: str | None = None,
        tenant: str | None = None,
    ) -> tuple[RouteResult, bytes]:
        """Pick a model for one request: the answer and the encoded decision event, which the
        caller must publish to ``router.decisions`` before answering."""
        x = request_context(self.featurizer, prompt, features)
        weights = request_preference(self.settings.default_cost_weight, preference, cost_weight)
        name = request_policy(self.policies, policy)
        candidates = request_candidates(self._catalog, models)
        chosen_policy = self.policies[name]
        with self.policies.lock:
            probabilities = chosen_policy.probabilities(x, candidates, weights)
            cumulative = np.cumsum(probabilities)
            index = int(np.searchsorted(cumulative, self._rng.random() * cumulative[-1], "right"))
            index = min(index, len(candidates) - 1)
            version = chosen_policy.updates
            predicted = (
                chosen_policy.expected(x, [candidates[index]])[0]
                if isinstance(chosen_policy, LinearPolicy)
                else None
            )
            scales = chosen_policy.scales
        chosen = candidates[index]
        try:
            event = DecisionEvent(
                decision_id=uuid.uuid4().hex,
                ts=self._clock(),
                policy=name,
                policy_version=version,
                arms=tuple(candidates),
                chosen=chosen,
                propensity=float(probabilities[index]),
                probabilities=tuple(probabilities.tolist()),
                preference=(weights.quality, weights.cost, weights.latency),
                features=SparseFeatures.from_dense(x),
                tenant=tenant,
            )
        except EventError as error:  # only the tenant text comes unchecked from the caller
            raise InvalidRequestError(field_of(error), str(error)) from None
        payload = encode(event)
        if self.settings.keep_prompts and prompt is not None:
            # Opt-in debugging aid: decoders ignore fields they do not know.
            payload = _with_field(payload, "prompt", prompt)
        expected = None
        if predicted is not None:
            expected = Expected(
                quality=float(np.clip(predicted[0], 0.0, 1.0)),
                cost=float(max(predicted[1], 0.0) * scales.cost),
                latency_ms=float(max(predicted[2], 0.0) * scales.latency_ms),
            )
        result = RouteResult(
            decision_id=event.decision_id,
            model=chosen,
            propensity=event.propensity,
            probabilities=dict(zip(candidates, event.probabilities, strict=True)),
            policy=name,
            policy_version=version,
            expected=expected,
        )
        return result, payload

    # --- feedback --------------------------------------------------------------------------------
    def feedback(self, **outcome: Any) -> str:
        """Publish the outcome of a decision for the learner (the arguments of
        `feedback_event`); returns the feedback id."""
        event = self.feedback_event(**outcome)
        self.bus.publish(TOPIC_FEEDBACK, event.decision_id, encode(event))
        return event.feedback_id

    async def feedback_async(self, **outcome: Any) -> str:
        """`feedback` for the API's event loop (see `route_async`)."""
        event = self.feedback_event(**outcome)
        await self.bus.publish_async(TOPIC_FEEDBACK, event.decision_id, encode(event))
        return event.feedback_id

    def feedback_event(
        self,
        *,
        decision_id: str,
        quality: float,
        cost: float | None = None,
        latency_ms: float | None = None,
        feedback_id: str | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
    ) -> FeedbackEvent:
        """The feedback event of a decision's outcome, for the caller to publish to
        ``router.feedback``.

        A missing cost is filled from the chosen model's catalog price (with the token counts if
        given, else a typical call). With a bus that can look decisions up, feedback for a
        decision it never logged is refused (`NotFoundError`); resending a feedback id is
        harmless (the learner ignores redeliveries).
        """
        chosen = self._decisions.chosen_model(decision_id)
        if cost is None and chosen is not None:
            cost = self._catalog_cost(chosen, input_tokens, output_tokens)
        try:
            event = FeedbackEvent(
                feedback_id=feedback_id or uuid.uuid4().hex,
                decision_id=decision_id,
                ts=self._clock(),
                quality=quality,
                cost=cost,
                latency_ms=latency_ms,
            )
        except EventError as error:
            raise InvalidRequestError(field_of(error), str(error)) from None
        return event

    def _catalog_cost(
        self, model_name: str, input_tokens: int | None, output_tokens: int | None
    ) -> float | None:
        model = self._catalog.get(model_name) or self.storage.get_model(model_name, True)
        if model is None:
            return None
        if input_tokens is None and output_tokens is None:
            return typical_cost(model)
        try:
            return call_cost(
                model,
                model.typical_input_tokens if input_tokens is None else input_tokens,
                model.typical_output_tokens if output_tokens is None else output_tokens,
            )
        except CatalogError as error:
            raise InvalidRequestError("input_tokens", str(error)) from None

    # --- decisions -------------------------------------------------------------------------------
    def decision(self, decision_id: str) -> DecisionInfo:
        """Where a decision is: pending (logged, no feedback applied yet), applied, or
        dead_lettered (with the reason)."""
        logged = self._decisions.logged(decision_id)
        status = self.storage.decision_status(decision_id)
        if status is None and logged is None:
            raise NotFoundError("decision_id", f"no decision {decision_id!r} is known")
        state, detail = status if status is not None else ("pending", {})
        return DecisionInfo(
            decision_id=decision_id,
            state=state,
            decision=None if logged is None else decision_body(logged),
            detail=detail,
        )

    # --- catalog ---------------------------------------------------------------------------------
    def list_models(self, include_removed: bool = False) -> list[CatalogModel]:
        if include_removed:
            return self.storage.list_models(include_removed=True)
        return sorted(self._catalog.values(), key=lambda model: model.name)

    def get_model(self, name: str) -> CatalogModel:
        model = self._catalog.get(name)
        if model is None:
            raise NotFoundError("name", f"no model {name!r} in the catalog")
        return model

    def put_model(self, model: CatalogModel) -> bool:
        """Create or replace a model; a new one becomes an arm of every policy at once (with its
        prior). True if it was created (or revived after removal)."""
        with self.policies.lock:
            created = self.storage.put_model(model)
            self.policies.ensure_arm(model.name, prior_outcome(model))
            self._catalog = dict(sorted({**self._catalog, model.name: model}.items()))
        return created

    def remove_model(self, name: str) -> None:
        """Stop routing to ``name`` by default; its arm and history stay in every policy."""
        with self.policies.lock:
            if not self.storage.remove_model(name):
                raise NotFoundError("name", f"no model {name!r} in the catalog")
            self._catalog = {n: m for n, m in self._catalog.items() if n != name}

    # --- introspection ---------------------------------------------------------------------------
    def policies_info(self) -> list[dict[str, Any]]:
        """Each policy: name, live version (= events learned), newest stored snapshot version,
        whether it serves, its arms and (linear policies) which outcomes the prompt-content model
        predicts (the others use the fallback on the dense signals)."""
        stored = self.storage.snapshot_versions()
        with self.policies.lock:
            return [
                {
                    "name": name,
                    "version": policy.updates,
                    "events_learned": policy.updates,
                    "snapshot_version": stored.get(name),
                    "serving": name == self.policies.serving,
                    "arms": list(policy.arms),
                    "content_model": (
                        dict(zip(OBJECTIVES, policy.uses_full_model().tolist(), strict=True))
                        if isinstance(policy, LinearPolicy)
                        else None
                    ),
                }
                for name, policy in self.policies.items()
            ]

    def set_serving_policy(self, name: str) -> str:
        """Serve ``name`` from now on (it must be one of the learning policies); stored in the
        database so it survives restarts and other replicas pick it up. Returns the previous one."""
        if name not in self.policies:
            known = ", ".join(self.policies)
            if name in POLICY_NAMES:
                message = f"policy {name!r} does not learn in this deployment; choose from {known}"
            else:
                message = f"unknown policy {name!r}; choose from {known}"
            raise InvalidRequestError("policy", message)
        with self.policies.lock:
            previous = self.policies.serving
            self.storage.set_config_value(SERVING_POLICY, name)
            self.policies.serving = name
        log.info("serving policy switched from %s to %s", previous, name)
        return previous

    def stats(self) -> dict[str, int]:
        """Committed totals (decisions and feedback as the learner consumed them) and the serving
        policy's live version."""
        totals = self.storage.stats()
        with self.policies.lock:
            version = self.policies.serving_policy.updates
        keys = (
            "decisions",
            "feedback_received",
            "feedback_applied",
            "dead_letters",
            "pending_decisions",
            "waiting_feedback",
        )
        return {key: int(totals.get(key, 0)) for key in keys} | {"policy_version": version}

    def readiness(self) -> dict[str, Any]:
        """Whether the database answers and the learner thread runs, with the reason if not,
        and the bus's state: ``degraded`` while events wait in the outbox for the broker (the
        service still routes, so it stays ready)."""
        checks: dict[str, Any] = {}
        try:
            engine = self.engine
            if engine is not None:
                with engine.connect() as connection:
                    connection.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as error:  # any driver error means "not ready", with its text
            checks["database"] = f"unreachable: {error}"
        thread = self.learner_thread
        if thread is None:
            idle = self.learner is not None or self.active_learner is not None
            checks["learner"] = "not started" if idle else "external"
        elif not thread.alive:
            checks["learner"] = f"stopped: {thread.error!r}"
        elif self.active_learner is not None and self.active_learner.state == "standby":
            checks["learner"] = "standby"
        else:
            checks["learner"] = "ok"
        checks["bus"] = "ok"
        if isinstance(self.bus, OutboxBus):
            try:
                status = self.bus.status()
                if status["state"] != "ok":
                    checks["bus"] = (
                        f"degraded: {status['pending']} events kept in the outbox until the bus "
                        f"answers ({status['error']})"
                    )
            except Exception as error:  # the outbox lives in the database
                checks["bus"] = f"unknown: {error}"
        checks["ready"] = checks["database"] == "ok" and checks["learner"] in (
            "ok",
            "standby",
            "external",
        )
        return checks


def use_stored_serving_policy(policies: PolicySet, storage: Storage) -> None:
    """Serve the policy an operator chose with ``PUT /v1/policies/serving`` (stored in the
    database), if it is one of ``policies``."""
    stored = storage.config_value(SERVING_POLICY)
    if stored in policies:
        policies.serving = stored
    elif stored is not None:
        log.warning(
            "the stored serving policy %r is not among policies %s; serving %r",
            stored,
            list(policies),
            policies.serving,
        )


def open_bus(settings: Settings, engine: Engine, clock: Callable[[], float] = time.time) -> Bus:
    """The bus ``settings.bus`` names: the embedded log in ``engine``'s SQLite file, or Kafka."""
    if settings.bus == "kafka":
        from streams.kafka import KafkaBus

        return KafkaBus(
            settings.kafka_bootstrap,
            partitions=settings.kafka_partitions,
            request_timeout_s=settings.kafka_timeout_s,
        )
    if engine.dialect.name != "sqlite":
        raise ConfigError(
            f"the embedded bus keeps its log in a SQLite database, not {engine.dialect.name}; "
            "with this database use the Kafka bus (--bus kafka://HOST:PORT)"
        )
    return EmbeddedBus(engine, clock)


def catalog_model(name: str, **values: Any) -> CatalogModel:
    """A `CatalogModel` from API fields, with `CatalogError` turned into `InvalidRequestError`."""
    known = {f.name for f in fields(CatalogModel)} - {"name"}
    try:
        return replace(CatalogModel(name), **{k: v for k, v in values.items() if k in known})
    except CatalogError as error:
        message = str(error)
        field = next((f for f in sorted(known) if message.startswith(f)), "name")
        raise InvalidRequestError(field, message) from None


def _with_field(payload: bytes, name: str, value: Any) -> bytes:
    body = json.loads(payload)
    body[name] = value
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode("utf-8")


__all__ = [
    "ConflictError",
    "DecisionInfo",
    "Expected",
    "InvalidRequestError",
    "NotFoundError",
    "RouteResult",
    "RouterService",
    "ServiceError",
    "catalog_model",
]
