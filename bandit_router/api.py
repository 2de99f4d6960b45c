"""The HTTP API (FastAPI): each route parses its input, calls one `RouterService` method and shapes
the answer. Every bad input is a 4xx ``{"detail": "<field>: <what is wrong>"}``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException
from starlette.routing import Match

from bandit_router.api_models import (
    DecisionResponse,
    ErrorOut,
    ExpectedOut,
    FeedbackAccepted,
    FeedbackRequest,
    Health,
    LoggedDecision,
    ModelIn,
    ModelOut,
    ModelPut,
    PolicyOut,
    Readiness,
    RouteRequest,
    RouteResponse,
    ServingPolicyIn,
    ServingPolicyOut,
    StatsOut,
    model_out,
)
from bandit_router.config import Settings
from bandit_router.json_route import JSONBodyRoute
from bandit_router.metrics import ServiceMetrics
from bandit_router.service import RouterService, ServiceError, catalog_model
from policies import Preference

log = logging.getLogger(__name__)

DecisionId = Annotated[str, Path(min_length=1, max_length=200)]
ModelNamePath = Annotated[str, Path(min_length=1, max_length=200)]


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorOut} for code in codes}


def create_app(settings: Settings, *, service: RouterService | None = None) -> FastAPI:
    """The API over ``service`` (default: `RouterService.open(settings)`, the embedded mode).

    The service is opened here, so a bad database or config fails before the server listens;
    the lifespan starts the learner thread and, on shutdown, lets it commit and stops it.
    """
    service = service or RouterService.open(settings)
    metrics = ServiceMetrics(service)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            service.close()

    app = FastAPI(
        title="bandit-router",
        version="0.1.0",
        summary="Routes each LLM request to a model by its own quality/cost/latency preference "
        "and learns online from feedback.",
        lifespan=lifespan,
        responses=_errors(400, 422),
    )
    app.state.service = service
    app.state.metrics = metrics
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(ServiceError, _service_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _internal_error)
    app.include_router(_router(service, metrics))
    return app


def _router(service: RouterService, metrics: ServiceMetrics) -> APIRouter:
    # The two hot routes are coroutines: their CPU work (featurize, score, encode) runs on the
    # event loop, and they await the durable write, so no request waits for a thread hand-off
    # and the loop never blocks on a commit. They skip FastAPI's per-request machinery
    # (`JSONBodyRoute`). The other routes stay in the thread pool.
    hot = APIRouter(route_class=JSONBodyRoute)

    @hot.post("/v1/route", tags=["routing"], responses=_errors(409, 422))
    async def route(body: RouteRequest) -> RouteResponse:
        """Pick a model for one request; the decision is logged durably before the answer."""
        started = time.perf_counter()
        preference = None if body.preference is None else Preference(**body.preference.model_dump())
        result = await service.route_async(
            prompt=body.prompt,
            features=body.features,
            models=body.models,
            preference=preference,
            cost_weight=body.cost_weight,
            policy=body.policy,
            tenant=body.tenant,
        )
        metrics.route_seconds.observe(time.perf_counter() - started)
        metrics.routes.labels(result.policy, result.model).inc()
        expected = result.expected
        return RouteResponse(
            decision_id=result.decision_id,
            model=result.model,
            propensity=result.propensity,
            probabilities=result.probabilities,
            policy=result.policy,
            policy_version=result.policy_version,
            expected=None if expected is None else ExpectedOut(**vars(expected)),
        )

    @hot.post(
        "/v1/feedback", status_code=202, tags=["routing"], responses=_errors(404, 422)
    )
    async def feedback(body: FeedbackRequest) -> FeedbackAccepted:
        """Report how the chosen model did; the learner applies it (first feedback wins)."""
        feedback_id = await service.feedback_async(**body.model_dump())
        metrics.feedback.inc()
        return FeedbackAccepted(feedback_id=feedback_id, decision_id=body.decision_id)

    router = APIRouter()
    router.include_router(hot)

    @router.get("/v1/decisions/{decision_id}", tags=["routing"], responses=_errors(404))
    def decision(decision_id: DecisionId) -> DecisionResponse:
        """A decision and its state: pending, applied, or dead_lettered with the reason."""
        info = service.decision(decision_id)
        return DecisionResponse(
            decision_id=info.decision_id,
            state=info.state,  # type: ignore[arg-type]
            reason=info.detail.get("reason"),
            feedback_id=info.detail.get("feedback_id"),
            applied_at=info.detail.get("applied_at"),
            decision=None if info.decision is None else LoggedDecision(**info.decision),
        )

    @router.get("/v1/models", tags=["catalog"])
    def list_models(include_removed: Annotated[bool, Query()] = False) -> list[ModelOut]:
        """The catalog, by name (removed models only if asked)."""
        return [model_out(m) for m in service.list_models(include_removed)]

    @router.get("/v1/models/{name:path}", tags=["catalog"], responses=_errors(404))
    def get_model(name: ModelNamePath) -> ModelOut:
        return model_out(service.get_model(name))

    @router.put(
        "/v1/models/{name:path}",
        tags=["catalog"],
        # 404: a name no path can carry (a line break: Starlette's path parameters stop there)
        responses=_errors(404, 422) | {201: {"model": ModelPut, "description": "Created"}},
    )
    def put_model(name: ModelNamePath, body: ModelIn, response: Response) -> ModelPut:
        """Create (201) or replace (200) a model; a new one is routable at once, with a prior."""
        model = catalog_model(name, **body.model_dump())
        created = service.put_model(model)
        response.status_code = 201 if created else 200
        return ModelPut(**model_out(model).model_dump(), created=created)

    @router.delete(
        "/v1/models/{name:path}", status_code=204, tags=["catalog"], responses=_errors(404)
    )
    def delete_model(name: ModelNamePath) -> Response:
        """Stop routing to a model by default; its arm and history stay in every policy."""
        service.remove_model(name)
        return Response(status_code=204)

    @router.get("/v1/policies", tags=["learning"])
    def list_policies() -> list[PolicyOut]:
        """Every policy (all learn from every event; one serves), its version and arms."""
        return [PolicyOut(**info) for info in service.policies_info()]

    @router.put("/v1/policies/serving", tags=["learning"], responses=_errors(422))
    def put_serving_policy(body: ServingPolicyIn) -> ServingPolicyOut:
        """Switch the serving policy at once, without a restart; stored, so it survives restarts
        and reaches every replica."""
        previous = service.set_serving_policy(body.policy)
        return ServingPolicyOut(policy=body.policy, previous=previous)

    @router.get("/v1/stats", tags=["learning"])
    def stats() -> StatsOut:
        """Committed totals and the serving policy's live version."""
        return StatsOut(**service.stats())

    @router.get("/healthz", tags=["operations"])
    def healthz() -> Health:
        """The process answers."""
        return Health()

    @router.get("/readyz", tags=["operations"], responses={503: {"model": Readiness}})
    def readyz() -> Any:
        """Ready when the database answers and the learner runs (503 with the reason if not)."""
        checks = service.readiness()
        body = Readiness(**checks)
        if not body.ready:
            return JSONResponse(body.model_dump(), status_code=503)
        return body

    @router.get(
        "/metrics",
        tags=["operations"],
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
    )
    def prometheus_metrics() -> Response:
        """Prometheus text format."""
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return router


# --- errors --------------------------------------------------------------------------------
async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    return JSONResponse({"detail": describe_validation(error.errors())}, status_code=422)


async def _service_error(request: Request, error: ServiceError) -> JSONResponse:
    return JSONResponse({"detail": str(error)}, status_code=error.status)


async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
    headers = dict(error.headers or {})
    detail = str(error.detail)
    if error.status_code == 400 and "parsing the body" in detail:
        detail = "body: cannot be read as JSON (it must be UTF-8 JSON text)"
    elif error.status_code == 405:
        # Each method of a path is its own route, so list what the other routes allow too.
        allowed = {
            method
            for route in request.app.router.routes
            if route.matches(request.scope)[0] == Match.PARTIAL
            for method in getattr(route, "methods", None) or ()
        }
        headers["Allow"] = ", ".join(sorted(allowed))
    return JSONResponse({"detail": detail}, status_code=error.status_code, headers=headers)


async def _internal_error(request: Request, error: Exception) -> JSONResponse:
    log.exception("%s %s failed", request.method, request.url.path, exc_info=error)
    return JSONResponse(
        {"detail": f"internal error ({type(error).__name__}); see the server log"}, status_code=500
    )


def describe_validation(errors: Sequence[Any]) -> str:
    """pydantic/FastAPI errors as ``"<field>: <message>"`` parts joined by "; "."""
    parts = []
    for error in errors:
        location = [str(part) for part in error.get("loc", ())]
        if error.get("type") == "json_invalid":
            reason = (error.get("ctx") or {}).get("error", "invalid JSON")
            where = f" at character {location[1]}" if len(location) > 1 else ""
            parts.append(f"body: malformed JSON ({reason}{where})")
            continue
        field = ".".join(location[1:]) or (location[0] if location else "body")
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        if error.get("type") == "extra_forbidden":
            message = "unknown field"
        elif len(location) <= 1 and error.get("type") == "missing":
            message = "a JSON object body is required"
        elif len(location) <= 1 and error.get("type") in (
            "model_attributes_type",
            "model_type",
            "dict_type",
        ):
            message = "must be a JSON object, sent with Content-Type: application/json"
        parts.append(f"{field}: {message}")
    return "; ".join(parts) or "invalid request"
