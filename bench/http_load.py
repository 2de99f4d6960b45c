"""The HTTP benchmark's workload and load generator: route bodies from the shipped prompts, the
feedback quality each model earns on them, and the client process that drives one level.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from tqdm import tqdm

from bandit_router.dataset import load_routing_csv
from bandit_router.featurizer import Featurizer
from bench.http_server import (
    CLIENT_CORE,
    ENDPOINT,
    FEATURE_DIM,
    LEARNER,
    LOOP,
    Server,
    cpu_by_thread,
    thread_cpu,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "routellm_sample.csv"
MODELS = {  # USD per 1M input / output tokens
    "gpt-4-1106-preview": (10.00, 30.00),
    "claude-3-5-sonnet": (3.00, 15.00),
    "claude-3-5-haiku": (0.80, 4.00),
    "mixtral-8x7b-instruct": (0.60, 0.60),
    "gpt-4o-mini": (0.15, 0.60),
    "llama-3.1-8b-instruct": (0.05, 0.08),
    "gemini-1.5-flash": (0.075, 0.30),
    "qwen-2.5-72b-instruct": (0.35, 0.40),
}
PROMPT_CHARS = (100, 2000)
COST_WEIGHTS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
ROUTE, ROUTE_FEEDBACK = "route", "route+feedback"


# --- the workload --------------------------------------------------------------------------
def build_prompts(seed: int = 0) -> list[str]:
    """Every shipped prompt of 100-2000 characters plus joins of 2-6 consecutive ones (longer
    multi-question prompts), all distinct."""
    rows = list(load_routing_csv(DATA).prompts)
    low, high = PROMPT_CHARS
    prompts = [p for p in rows if low <= len(p) <= high]
    rng = np.random.default_rng(seed)
    for _ in range(len(prompts) // 2):
        start, parts = int(rng.integers(len(rows))), int(rng.integers(2, 7))
        joined = "\n\n".join(rows[start : start + parts])[:high]
        if len(joined) >= low:
            prompts.append(joined)
    return sorted(set(prompts), key=prompts.index)


def route_bodies(prompts: Sequence[str], count: int, seed: int) -> list[bytes]:
    """JSON bodies of ``POST /v1/route``: random prompts, mostly a cost weight, a quarter a full
    preference, a tenth with a tenant."""
    rng = np.random.default_rng(seed)
    bodies = []
    for _ in range(count):
        body: dict[str, Any] = {"prompt": prompts[int(rng.integers(len(prompts)))]}
        if rng.random() < 0.25:
            q, c, lat = (round(float(v), 3) for v in rng.dirichlet((2.0, 1.0, 0.5)))
            body["preference"] = {"quality": q, "cost": c, "latency": lat}
        else:
            body["cost_weight"] = float(rng.choice(COST_WEIGHTS))
        if rng.random() < 0.1:
            body["tenant"] = f"tenant-{int(rng.integers(5))}"
        bodies.append(json.dumps(body).encode())
    return bodies


def _http_request(method: str, path: str, port: int, body: bytes) -> bytes:
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def feedback_qualities(bodies: Sequence[bytes], seed: int = 0) -> list[dict[str, float]]:
    """The quality each model earns on each body's prompt: ``clip(0.5 + w_model . x, 0, 1)`` over
    the prompt's hashed n-gram features ``x``, with fixed random ``w`` (std of the quality ~0.19).

    Linear in the content features by design, so the policy's content model predicts quality
    better than the fallback within the warm-up and serves with it: the benchmark then times the
    dearer scoring path (every arm's d x d inverse), not the fallback's 14 features.
    """
    featurizer = Featurizer(dim=FEATURE_DIM)
    hashed = featurizer.hashed_dims
    weights = np.random.default_rng(seed).normal(0.0, 0.25, size=(len(MODELS), hashed))
    prompts = [json.loads(body)["prompt"] for body in bodies]
    contexts = featurizer.transform_many(prompts)[:, :hashed]
    quality = np.clip(0.5 + contexts @ weights.T, 0.0, 1.0)
    return [dict(zip(MODELS, row.round(3).tolist(), strict=True)) for row in quality]


def _feedback_body(decision_id: str, quality: float, i: int) -> bytes:
    # Deterministic per request: the model's quality on the prompt, a latency, a catalog-priced
    # cost every 3rd.
    latency = 200 + (i * 104729) % 4000
    cost = "" if i % 3 == 0 else f',"cost":{(i % 97) * 1e-5:.5f}'
    return (
        f'{{"decision_id":"{decision_id}","quality":{quality:.3f},"latency_ms":{latency}{cost}}}'
    ).encode()


# --- the load generator (runs in its own process) ------------------------------------------
class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with one request in flight; minimal parsing (status,
    Content-Length) so the client spends little CPU per request."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        head = bytes(self.buffer[:end]).lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            self.waiter.set_exception(ConnectionError("response without Content-Length"))
            return
        line_end = head.find(b"\r\n", at + 2)
        length = int(head[at + 17 : line_end if line_end > 0 else len(head)])
        total = end + 4 + length
        if len(self.buffer) < total:
            return
        status, body = int(head[9:12]), bytes(self.buffer[end + 4 : total])
        del self.buffer[:total]
        waiter, self.waiter = self.waiter, None
        waiter.set_result((status, body))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection closed: {exc}"))

    async def request(self, data: bytes) -> tuple[int, bytes]:
        self.waiter = asyncio.get_running_loop().create_future()
        assert self.transport is not None
        self.transport.write(data)
        return await self.waiter


async def _drive(port: int, mode: str, concurrency: int, bodies: Sequence[bytes],
                 max_seconds: float, progress: Any, server_pid: int, ready: Any, go: Any
                 ) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    connections = [
        (await loop.create_connection(_Connection, "127.0.0.1", port))[1]
        for _ in range(concurrency)
    ]
    route_requests = [_http_request("POST", "/v1/route", port, body) for body in bodies]
    qualities = feedback_qualities(bodies) if mode == ROUTE_FEEDBACK else []
    latencies: dict[str, list[int]] = {"route": [], "feedback": []}
    errors: list[str] = []
    next_index = 0
    deadline = 0.0  # set when the clock starts, after every connection is open
    clock = time.perf_counter_ns

    async def worker(connection: _Connection) -> None:
        nonlocal next_index
        while next_index < len(route_requests) and time.perf_counter() < deadline:
            i = next_index
            next_index += 1
            try:
                t0 = clock()
                status, body = await connection.request(route_requests[i])
                latencies["route"].append(clock() - t0)
                if status != 200:
                    errors.append(f"route {status}: {body[:200]!r}")
                elif mode == ROUTE_FEEDBACK:
                    decision = json.loads(body)
                    quality = qualities[i][decision["model"]]
                    feedback = _http_request(
                        "POST", "/v1/feedback", port,
                        _feedback_body(decision["decision_id"], quality, i),
                    )
                    t0 = clock()
                    status, body = await connection.request(feedback)
                    latencies["feedback"].append(clock() - t0)
                    if status != 202:
                        errors.append(f"feedback {status}: {body[:200]!r}")
            except (ConnectionError, ValueError, KeyError) as error:
                errors.append(f"request {i}: {type(error).__name__}: {error}")
                return  # this connection is unusable; the others carry on
            if i % 25 == 0:
                progress.value = next_index

    ready.set()  # connected; the parent may start a profiler before saying go
    await loop.run_in_executor(None, go.wait)
    cpu, server_threads = time.process_time(), thread_cpu(server_pid)
    started = time.perf_counter()
    deadline = started + max_seconds
    await asyncio.gather(*(worker(c) for c in connections))
    seconds = time.perf_counter() - started
    cpu, server_threads_after = time.process_time() - cpu, thread_cpu(server_pid)
    progress.value = next_index
    for connection in connections:
        assert connection.transport is not None
        connection.transport.close()
    return {"latencies": latencies, "errors": errors, "seconds": seconds,
            "client_cpu_s": cpu, "server_threads": (server_threads, server_threads_after),
            "capped": next_index < len(route_requests)}


def _load_process(port: int, mode: str, concurrency: int, bodies: Sequence[bytes],
                  max_seconds: float, progress: Any, results: Any, server_pid: int,
                  ready: Any, go: Any) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > CLIENT_CORE:
        os.sched_setaffinity(0, {CLIENT_CORE})
    try:
        results.put(asyncio.run(
            _drive(port, mode, concurrency, bodies, max_seconds, progress, server_pid, ready, go)
        ))
    except BaseException as error:  # report, don't hang the parent waiting on the queue
        results.put({"failure": f"{type(error).__name__}: {error}"})


def run_level(port: int, mode: str, concurrency: int, bodies: Sequence[bytes], max_seconds: float,
              label: str, server: Server, before_start: Callable[[], None] | None = None
              ) -> dict[str, Any]:
    """Drive ``bodies`` from a separate process pinned to the client core; returns its raw
    latencies (ns), errors, wall seconds, its own CPU and the server's CPU by thread group.
    ``before_start`` runs once the client is connected, just before its clock starts."""
    context = mp.get_context("spawn")
    progress, results = context.Value("q", 0, lock=False), context.Queue()
    ready, go = context.Event(), context.Event()
    process = context.Process(
        target=_load_process,
        args=(port, mode, concurrency, list(bodies), max_seconds, progress, results,
              server.pid, ready, go),
        daemon=True,
    )
    process.start()
    try:
        with tqdm(total=len(bodies), desc=label, unit="req", leave=False) as bar:
            while process.is_alive() and results.empty():
                if ready.is_set() and not go.is_set():
                    if before_start is not None:
                        before_start()
                    go.set()
                time.sleep(0.02)
                bar.update(progress.value - bar.n)
            outcome = results.get(timeout=max_seconds + 60)
        process.join(timeout=10)
    finally:
        if process.is_alive():
            process.kill()
    if "failure" in outcome:
        raise RuntimeError(f"load generator failed at {label}: {outcome['failure']}")
    outcome["server_cpu"] = cpu_by_thread(*outcome.pop("server_threads"), server.pid,
                                          server.background)
    return outcome


def summarise(mode: str, concurrency: int, outcome: dict[str, Any]) -> dict[str, Any]:
    routes = np.array(outcome["latencies"]["route"]) / 1e6
    feedback = np.array(outcome["latencies"]["feedback"]) / 1e6
    every = np.concatenate([routes, feedback])
    seconds = outcome["seconds"]
    cpu = outcome["server_cpu"]
    server_cpu_s = sum(cpu.get(group, 0.0) for group in (LOOP, ENDPOINT, LEARNER))

    def pct(values: np.ndarray, q: float) -> float:
        return round(float(np.percentile(values, q)), 3) if values.size else float("nan")

    level = {
        "mode": mode,
        "concurrency": concurrency,
        "requests": int(every.size),
        "routes": int(routes.size),
        "seconds": round(seconds, 3),
        "req_per_s": round(every.size / seconds, 1),
        "route_per_s": round(routes.size / seconds, 1),
        "p50_ms": pct(every, 50),
        "p90_ms": pct(every, 90),
        "p99_ms": pct(every, 99),
        "max_ms": round(float(every.max()), 3),
        "errors": len(outcome["errors"]),
        "error_samples": outcome["errors"][:5],
        "capped_by_wall_clock": outcome["capped"],
        "server_cpu_util": round(server_cpu_s / seconds, 3),
        "server_cpu_us_per_req": round(server_cpu_s / every.size * 1e6, 1),
        "client_cpu_util": round(outcome["client_cpu_s"] / seconds, 3),
        "server_cpu_us_per_req_by_thread": {
            group: round(used / every.size * 1e6, 1) for group, used in cpu.items()
        },
    }
    if feedback.size:
        level |= {"route_p50_ms": pct(routes, 50), "route_p99_ms": pct(routes, 99),
                  "feedback_p50_ms": pct(feedback, 50), "feedback_p99_ms": pct(feedback, 99)}
    return level


def set_catalog(client: httpx.Client) -> list[str]:
    """Exactly the 8 `MODELS`, enabled; anything else in the catalog is removed."""
    for name, (price_in, price_out) in MODELS.items():
        client.put(f"/v1/models/{name}", json={"price_in_per_m": price_in,
                                               "price_out_per_m": price_out}).raise_for_status()
    for model in client.get("/v1/models").json():
        if model["name"] not in MODELS:
            client.delete(f"/v1/models/{model['name']}").raise_for_status()
    enabled = sorted(m["name"] for m in client.get("/v1/models").json() if m["enabled"])
    if enabled != sorted(MODELS):
        raise RuntimeError(f"catalog is {enabled}, expected the 8 benchmark models")
    return enabled
