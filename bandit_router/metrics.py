"""Prometheus metrics of one app: request counters and latency here, learner totals and policy
versions read from the service at scrape time. Each app has its own `CollectorRegistry`."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bandit_router.service import RouterService

ROUTE_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)


class ServiceMetrics:
    """The metrics the API records, plus a collector over the service's learner and policies."""

    def __init__(self, service: RouterService) -> None:
        self.registry = CollectorRegistry()
        self.routes = Counter(
            "bandit_router_routes",
            "Routed requests, by policy and chosen model.",
            ["policy", "model"],
            registry=self.registry,
        )
        self.feedback = Counter(
            "bandit_router_feedback", "Feedback accepted by the API.", registry=self.registry
        )
        self.route_seconds = Histogram(
            "bandit_router_route_seconds",
            "Time to answer POST /v1/route inside the service.",
            buckets=ROUTE_BUCKETS_S,
            registry=self.registry,
        )
        self.registry.register(_ServiceCollector(service))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ServiceCollector(Collector):
    def __init__(self, service: RouterService) -> None:
        self._service = service

    def collect(self) -> Iterator[Metric]:
        learner = self._service.running_learner
        if learner is not None:
            yield CounterMetricFamily(
                "bandit_router_feedback_applied",
                "Feedback applied to the policies by this process's learner (committed).",
                value=learner.applied_total,
            )
            yield CounterMetricFamily(
                "bandit_router_dead_letters",
                "Events this process's learner dead-lettered (committed).",
                value=learner.dead_letters_total,
            )
            yield CounterMetricFamily(
                "bandit_router_learner_commits", "Learner checkpoints committed.",
                value=learner.commits_total,
            )
        versions = GaugeMetricFamily(
            "bandit_router_policy_version",
            "Events each policy has learned from.",
            labels=["policy"],
        )
        policies = self._service.policies
        with policies.lock:
            for name, policy in policies.items():
                versions.add_metric([name], policy.updates)
        yield versions
