"""End-to-end HTTP benchmark of `bandit-router serve`: one uvicorn worker, LinUCB d=256, 8 models,
loaded by a separate pinned client process at several concurrency levels, plus a py-spy profile.

Run ``python -m bench.http [--requests 3000] [--concurrency 1,8,32,64] [--out bench/results]``;
writes ``http.json``, ``http.md`` and ``http.png`` under ``--out``. The profile needs py-spy (PyPI),
which the run installs with pip if it is missing (``--no-profile`` skips it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from tqdm import tqdm

from bandit_router.dataset import load_routing_csv
from bandit_router.featurizer import Featurizer

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
POLICY, FEATURE_DIM = "linucb", 256
PROMPT_CHARS = (100, 2000)
COST_WEIGHTS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
WARMUP = 300  # route+feedback pairs before the first timed level
SERVER_CORE, CLIENT_CORE = 0, 1
TARGET_RPS, TARGET_P99_MS = 1000.0, 20.0
PROFILE_RATE_HZ = 1000
IDLE_PROBE_S = 2.0
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


# --- the server ----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pin_server() -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > CLIENT_CORE:
        os.sched_setaffinity(0, {SERVER_CORE})


@dataclass
class Server:
    """A running `bandit-router serve`: its process (group leader), port and log, and the
    threads it had before its first request (the learner, idle native threads)."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path
    background: set[int] = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]


def start_server(workdir: Path, port: int) -> Server:
    """`bandit-router serve` (same interpreter, ``-m bandit_router.cli``) in its own process
    group, pinned to the server core; returns once it accepts connections."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BANDIT_ROUTER_")}
    env["BANDIT_ROUTER_FEATURE_DIM"] = str(FEATURE_DIM)
    command = [sys.executable, "-m", "bandit_router.cli", "serve", "--host", "127.0.0.1",
               "--port", str(port), "--policy", POLICY,
               "--database", f"sqlite:///{workdir / 'bench.db'}"]
    log = workdir / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=workdir, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True,
                                   preexec_fn=pin_server)
    server = Server(process, port, log)
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log_tail()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            break  # uvicorn listens after the lifespan started the learner
        if time.monotonic() > deadline:
            raise RuntimeError(f"server not listening after 60 s:\n{server.log_tail()}")
        time.sleep(0.1)
    server.background = set(thread_cpu(server.pid)) - {server.pid}
    return server


def stop_process_group(server: Server | None) -> None:
    if server is None or server.process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.process.wait(timeout=5)


def server_stack(server: Server) -> str:
    """The event loop and HTTP parser the server says it runs (its first log line)."""
    for line in server.log.read_text(errors="replace").splitlines():
        if line.startswith("bandit-router serve: "):
            return line.removeprefix("bandit-router serve: ")
    return "event loop and HTTP parser not reported"


def wait_ready(client: httpx.Client, server: Server) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.2)
    raise RuntimeError(f"server not ready after 30 s:\n{server.log_tail()}")


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


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def serving_version(client: httpx.Client) -> int:
    return next(p["version"] for p in client.get("/v1/policies").json() if p["serving"])


def serving_content_model(client: httpx.Client) -> dict[str, bool]:
    """Which outcomes the serving policy predicts with its prompt-content model."""
    return next(p["content_model"] for p in client.get("/v1/policies").json() if p["serving"])


def wait_learner(client: httpx.Client, version: int, timeout_s: float = 60.0) -> float:
    """Seconds until the serving policy has learned up to ``version`` (feedback applied)."""
    started = time.monotonic()
    while serving_version(client) < version and time.monotonic() - started < timeout_s:
        time.sleep(0.05)
    return round(time.monotonic() - started, 2)


# --- where the time goes -------------------------------------------------------------------
LOOP, ENDPOINT, LEARNER = (
    "event loop thread",
    "request threads (event-log writer, AnyIO pool)",
    "learner thread",
)


def thread_cpu(pid: int) -> dict[int, tuple[float, float]]:
    """(user, system) CPU seconds so far of each thread of the process."""
    ticks = os.sysconf("SC_CLK_TCK")
    times = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            times[int(task.name)] = (int(fields[11]) / ticks, int(fields[12]) / ticks)
    return times


def thread_group(tid: int, pid: int, background: set[int]) -> str:
    """The main thread runs the event loop; threads alive before the first request are the
    learner (and idle native BLAS threads, the outbox flusher); later ones are the embedded bus's
    group-commit writer and the AnyIO pool (sync routes, not the hot ones)."""
    return LOOP if tid == pid else LEARNER if tid in background else ENDPOINT


def cpu_by_thread(before: dict[int, tuple[float, float]], after: dict[int, tuple[float, float]],
                  pid: int, background: set[int]) -> dict[str, float]:
    used: dict[str, float] = defaultdict(float)
    for tid, (user, system) in after.items():
        user0, system0 = before.get(tid, (0.0, 0.0))
        used[thread_group(tid, pid, background)] += user - user0 + system - system0
    used["kernel (system time, all threads)"] = sum(
        system - before.get(tid, (0.0, 0.0))[1] for tid, (_, system) in after.items()
    )
    return dict(used)


# Samples go to the first rule matching a frame, from the leaf up. The route and feedback
# coroutines run on the event loop thread; their commits run in the event-log writer thread.
Rule = tuple[str, Callable[[str, str], bool]]
REQUEST_RULES: list[Rule] = [
    ("featurize (prompt -> x)", lambda f, n: "bandit_router/featurizer.py" in f),
    ("policy scoring (LinUCB probabilities + expected)", lambda f, n: "/policies/" in f),
    ("SQLite publish + commit (event log insert)", lambda f, n: "streams/embedded.py" in f),
    ("decision event build + JSON encode", lambda f, n: "streams/events.py" in f),
    ("Prometheus metrics", lambda f, n: "prometheus_client" in f),
    ("uuid4", lambda f, n: f.endswith("uuid.py")),
    ("SQLAlchemy (feedback's decision lookup)", lambda f, n: "sqlalchemy" in f),
    ("response serialisation (pydantic)",
     lambda f, n: n in ("serialize_response", "jsonable_encoder", "dump_json",
                        "_prepare_response_content")),
    ("request parse + validation (pydantic)",
     lambda f, n: "pydantic" in f or "fastapi/_compat" in f
     or n in ("request_body_to_args", "solve_dependencies", "json", "body")),
    ("service + route code (service.py, api.py)",
     lambda f, n: "bandit_router/service.py" in f or "bandit_router/api.py" in f),
    ("thread-pool hand-off (anyio, queue, wake-ups)",
     lambda f, n: "anyio" in f or "starlette/concurrency.py" in f or f.endswith(
         ("queue.py", "threading.py")) or n in ("call_soon_threadsafe", "_write_to_self")),
    ("HTTP protocol + socket I/O (uvicorn h11, asyncio transport)",
     lambda f, n: "uvicorn" in f or "/h11/" in f or f.endswith("selector_events.py")),
    ("Starlette/FastAPI routing + middleware", lambda f, n: "starlette" in f or "fastapi" in f),
    ("asyncio event loop", lambda f, n: "asyncio" in f or f.endswith("selectors.py")),
]
LEARNER_RULES: list[Rule] = [  # whole-stack rules, in priority order
    ("policy updates (every policy learns each feedback)", lambda f, n: "/policies/" in f),
    ("checkpoint commit (join state, snapshots, SQLite)",
     lambda f, n: n == "commit" and "learner.py" in f),
    ("read + decode + join events", lambda f, n: "streams/" in f),
]


def _category(group: str, stack: list[tuple[str, str]]) -> str:
    if group == LEARNER:
        for name, rule in LEARNER_RULES:
            if any(rule(file, function) for file, function in stack):
                return name
        return "poll loop + other"
    for file, function in reversed(stack):
        for name, rule in REQUEST_RULES:
            if rule(file, function):
                return name
    return "other"


def profile_costs(speedscope: Path, cpu: dict[str, float], pid: int, background: set[int],
                  requests: int) -> list[dict[str, Any]]:
    """CPU microseconds per request by (thread, category): py-spy's ``--gil`` samples (time a
    thread held the GIL) per category, plus each thread's measured CPU outside them (syscalls,
    SQLite and NumPy code that releases the GIL, kernel time, GIL hand-offs)."""
    data = json.loads(speedscope.read_text())
    frames = [(f.get("file", ""), f.get("name", "")) for f in data["shared"]["frames"]]
    held: dict[tuple[str, str], float] = defaultdict(float)
    for profile in data["profiles"]:
        tid = int(profile["name"].split()[1]) if profile["name"].startswith("Thread ") else -1
        group = thread_group(tid, pid, background)
        for stack, seconds in zip(profile["samples"], profile["weights"], strict=True):
            held[group, _category(group, [frames[i] for i in stack])] += seconds
    for group in (LOOP, ENDPOINT, LEARNER):
        outside = cpu.get(group, 0.0) - sum(s for (g, _), s in held.items() if g == group)
        held[group, "outside the GIL (syscalls, SQLite/NumPy C code, kernel, hand-offs)"] = max(
            outside, 0.0)
    rows = [{"thread": group, "what": what, "us_per_req": round(s / requests * 1e6, 1)}
            for (group, what), s in held.items()]
    return sorted(rows, key=lambda row: -row["us_per_req"])


def ensure_py_spy() -> str:
    found = shutil.which("py-spy")
    if found is None:
        print("installing py-spy (PyPI) for the profile: pip install py-spy", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"], check=True)
        found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return found


def run_profile(py_spy: str, server: Server, concurrency: int, bodies: Sequence[bytes],
                max_seconds: float, workdir: Path) -> dict[str, Any]:
    """One route-only level with py-spy sampling the server's GIL holder (from the client core,
    without pausing the server); CPU microseconds per request by thread and category."""
    output = workdir / "profile.speedscope.json"
    command = [py_spy, "record", "--pid", str(server.pid), "--rate", str(PROFILE_RATE_HZ),
               "--gil", "--nonblocking", "--format", "speedscope", "--output", str(output)]
    spies: list[subprocess.Popen[bytes]] = []

    def attach() -> None:  # once the client is connected, so the samples cover the level only
        spies.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      start_new_session=True))
        time.sleep(0.5)  # py-spy attaches

    try:
        outcome = run_level(server.port, ROUTE, concurrency, bodies, max_seconds,
                            f"profile {ROUTE} c={concurrency}", server, before_start=attach)
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
    stderr = b"".join(spy.communicate(timeout=60)[1] for spy in spies)
    if not output.exists():
        raise RuntimeError(f"py-spy wrote no profile: {stderr.decode()[-1000:]}")
    level = summarise(ROUTE, concurrency, outcome)
    return {
        "tool": f"py-spy {_version_of(py_spy)} record --gil --rate {PROFILE_RATE_HZ} "
                "--nonblocking --format speedscope, attached for one level",
        "level": {k: level[k] for k in ("mode", "concurrency", "requests", "req_per_s", "p50_ms",
                                        "p99_ms", "errors", "server_cpu_us_per_req")},
        "top_costs": profile_costs(output, outcome["server_cpu"], server.pid, server.background,
                                   level["requests"]),
    }


def _version_of(executable: str) -> str:
    out = subprocess.run([executable, "--version"], capture_output=True, text=True).stdout
    return out.strip().split()[-1] if out.strip() else "?"


# --- the run -------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError):
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").open()
                    if line.startswith("model name")), "?")
    packages = {}
    for name in ("fastapi", "starlette", "uvicorn", "h11", "httptools", "uvloop", "pydantic",
                 "numpy", "sqlalchemy", "anyio"):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "packages": packages}


def wait_quiet(pid: int, timeout_s: float = 30.0) -> float:
    """Seconds until the server's CPU use over 0.5 s drops below 30% (learner backlog drained)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        before = cpu_seconds(pid)
        time.sleep(0.5)
        if cpu_seconds(pid) - before < 0.15:
            break
    return round(time.monotonic() - started, 2)


def judge(levels: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The target at the best route-only level: the fastest with p99 < 20 ms (else the fastest)."""
    routes = [level for level in levels if level["mode"] == ROUTE]
    within = [level for level in routes if level["p99_ms"] < TARGET_P99_MS]
    best = max(within or routes, key=lambda level: level["req_per_s"])
    rps_ok, p99_ok = best["req_per_s"] >= TARGET_RPS, best["p99_ms"] < TARGET_P99_MS
    return {
        f"route_req_per_s >= {TARGET_RPS:.0f}": rps_ok,
        f"p99_ms < {TARGET_P99_MS:.0f}": p99_ok,
        "met": rps_ok and p99_ok,
        "level": {k: best[k] for k in ("mode", "concurrency", "req_per_s", "p99_ms")},
        "rule": "route-only level with the most req/s among those with p99 < 20 ms "
                "(the fastest level if none)",
        "peak_route_req_per_s": max(level["req_per_s"] for level in routes),
        "lowest_route_p99_ms": min(level["p99_ms"] for level in routes),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    pinned = hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > CLIENT_CORE
    if pinned:  # this orchestrating process stays off the server's core too
        os.sched_setaffinity(0, {CLIENT_CORE})
    prompts = build_prompts()
    lengths = np.array([len(p) for p in prompts])
    py_spy = ensure_py_spy() if args.profile else None
    workdir = Path(tempfile.mkdtemp(prefix="bench-http-"))
    server = None
    try:
        port = args.port or free_port()
        server = start_server(workdir, port)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            wait_ready(client, server)
            models = set_catalog(client)
            policies = [p["name"] for p in client.get("/v1/policies").json()]
            warm = run_level(port, ROUTE_FEEDBACK, 8, route_bodies(prompts, WARMUP, seed=1),
                             args.max_seconds, "warm-up", server)
            if warm["errors"]:
                raise RuntimeError(f"warm-up got errors, e.g. {warm['errors'][:3]}")
            wait_learner(client, WARMUP)
            content_model = {"after_warmup": serving_content_model(client)}
            if not content_model["after_warmup"]["quality"]:
                raise RuntimeError("after the warm-up the serving policy still scores quality with "
                                   "its fallback model; the timed levels would miss the dear path")
            wait_quiet(server.pid)
            idle = cpu_seconds(server.pid)
            time.sleep(IDLE_PROBE_S)
            idle_util = (cpu_seconds(server.pid) - idle) / IDLE_PROBE_S
            levels = []
            for seed, (concurrency, mode) in enumerate(
                ((c, m) for c in args.concurrency for m in (ROUTE, ROUTE_FEEDBACK)), start=2
            ):
                bodies = route_bodies(prompts, args.requests, seed)
                before = serving_version(client)
                outcome = run_level(port, mode, concurrency, bodies, args.max_seconds,
                                    f"{mode} c={concurrency}", server)
                level = summarise(mode, concurrency, outcome)
                if mode == ROUTE_FEEDBACK:
                    applied = before + len(outcome["latencies"]["feedback"])
                    level["learner_catchup_s"] = wait_learner(client, applied)
                level["settle_s"] = wait_quiet(server.pid)
                levels.append(level)
                tqdm.write(f"{mode:>15} c={concurrency:<3} {level['req_per_s']:>7.1f} req/s  "
                           f"p50 {level['p50_ms']:.2f}  p99 {level['p99_ms']:.2f}  "
                           f"max {level['max_ms']:.1f} ms  errors {level['errors']}  "
                           f"server CPU {level['server_cpu_util']:.0%}  "
                           f"client CPU {level['client_cpu_util']:.0%}")
            profile = None
            if py_spy is not None:
                profile_c = args.concurrency[len(args.concurrency) // 2]
                profile = run_profile(py_spy, server, profile_c,
                                      route_bodies(prompts, args.requests, seed=99),
                                      args.max_seconds, workdir)
            stats = client.get("/v1/stats").json()
            content_model["at_end"] = serving_content_model(client)
            stack = server_stack(server)
    finally:
        stop_process_group(server)
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "machine": machine(),
        "code": code_revision(),
        "config": {
            "command": "python -m bandit_router.cli serve --host 127.0.0.1 --port PORT "
                       f"--policy {POLICY} --database sqlite:///TMPDIR/bench.db "
                       f"(BANDIT_ROUTER_FEATURE_DIM={FEATURE_DIM}; one uvicorn worker)",
            "policy": POLICY, "feature_dim": FEATURE_DIM, "models": models,
            "learning_policies": policies,
            "requests_per_level": args.requests, "concurrency": args.concurrency,
            "max_seconds_per_level": args.max_seconds, "warmup_pairs": WARMUP,
            "prompts": {"distinct": len(prompts), "chars_min": int(lengths.min()),
                        "chars_median": int(np.median(lengths)),
                        "chars_mean": int(lengths.mean()), "chars_max": int(lengths.max()),
                        "source": "data/routellm_sample.csv (100-2000 chars) + joins of 2-6"},
            "preferences": f"75% cost_weight from {list(COST_WEIGHTS)}, 25% a Dirichlet "
                           "(quality, cost, latency) preference; 10% with a tenant",
            "cpu_pinning": (f"server on core {SERVER_CORE}, load generator (and this "
                            f"orchestrator, py-spy) on core {CLIENT_CORE} via sched_setaffinity"
                            if pinned else "none (fewer than 2 cores)"),
            "client": "a separate process: asyncio, one keep-alive HTTP/1.1 connection per "
                      "concurrent request, pre-encoded bodies; latency from write to last byte",
        },
        "levels": levels,
        "target": judge(levels),
        "profile": profile,
        "serving_content_model": content_model,
        "idle_server_cpu_util": round(idle_util, 3),
        "server_stack": stack,
        "final_stats": stats,
    }


def code_revision() -> dict[str, Any]:
    """The commit measured and any uncommitted changes to the service's code."""
    root = Path(__file__).resolve().parent.parent

    def git(*command: str) -> str:
        done = subprocess.run(["git", *command], cwd=root, capture_output=True, text=True)
        return done.stdout.strip()

    return {"commit": git("rev-parse", "HEAD"),
            "uncommitted": git("status", "--porcelain", "--", "bandit_router", "policies",
                               "streams").splitlines()}


# --- the report ----------------------------------------------------------------------------
def write_markdown(result: dict[str, Any], path: Path) -> None:
    config, target, machine_info = result["config"], result["target"], result["machine"]
    prompts = config["prompts"]
    lines = [
        "# HTTP benchmark: `bandit-router serve`",
        "",
        f"One uvicorn worker ({result['server_stack']}), `--policy {config['policy']}`, "
        f"feature dim {config['feature_dim']}, "
        f"{len(config['models'])} enabled models, embedded SQLite (temp dir), the default "
        f"shadow policies ({', '.join(config['learning_policies'])}) learning in the background. "
        f"{machine_info['cores']} cores ({machine_info['cpu']}), Python "
        f"{machine_info['python']}; {config['cpu_pinning']}.",
        "",
        f"Workload: {config['requests_per_level']} routes per level ({WARMUP} route+feedback "
        f"pairs of warm-up first), {prompts['distinct']} distinct prompts of "
        f"{prompts['chars_min']}-{prompts['chars_max']} chars (median "
        f"{prompts['chars_median']}), {config['preferences']}. *route+feedback* follows every "
        "route with `POST /v1/feedback` for its decision id on the same connection; its req/s "
        "and percentiles count both requests. Latency is client-side, per request. The reported "
        "quality is linear in the prompt's hashed n-grams (`feedback_qualities`), so the serving "
        "LinUCB scores with its content model, every arm's 257 x 257 inverse, not the 14-feature "
        "fallback (content model per outcome after the warm-up: "
        f"{_outcome_flags(result['serving_content_model']['after_warmup'])}; at the end: "
        f"{_outcome_flags(result['serving_content_model']['at_end'])}).",
        "",
        "Server CPU per request is split by thread from `/proc/<pid>/task/*/stat`: the event "
        "loop (HTTP, routing, validation, featurize, score, encode, rendering), the request "
        "threads (the embedded bus's group-commit writer; the AnyIO pool, idle on the hot "
        "routes) and the learner (decode, join, learn, checkpoint). Idle, the server uses "
        f"{result['idle_server_cpu_util']:.0%} of its core.",
        "",
        "| mode | concurrency | requests | s | req/s | routes/s | p50 ms | p90 ms | p99 ms "
        "| max ms | errors | server CPU | server CPU µs/req (loop / writer + pool / learner) "
        "| client CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for level in result["levels"]:
        capped = " (capped)" if level["capped_by_wall_clock"] else ""
        threads = level["server_cpu_us_per_req_by_thread"]
        lines.append(
            f"| {level['mode']} | {level['concurrency']} | {level['requests']}{capped} | "
            f"{level['seconds']:.1f} | {level['req_per_s']:,.0f} | {level['route_per_s']:,.0f} | "
            f"{level['p50_ms']:.2f} | {level['p90_ms']:.2f} | {level['p99_ms']:.2f} | "
            f"{level['max_ms']:.1f} | {level['errors']} | {level['server_cpu_util']:.0%} | "
            f"{level['server_cpu_us_per_req']:,.0f} ({threads.get(LOOP, 0):,.0f} / "
            f"{threads.get(ENDPOINT, 0):,.0f} / {threads.get(LEARNER, 0):,.0f}) | "
            f"{level['client_cpu_util']:.0%} |"
        )
    feedback_levels = [level for level in result["levels"] if level["mode"] == ROUTE_FEEDBACK]
    if feedback_levels:
        lines += ["", "route+feedback split: " + "; ".join(
            f"c={level['concurrency']}: route p50/p99 {level['route_p50_ms']:.2f}/"
            f"{level['route_p99_ms']:.2f} ms, feedback p50/p99 {level['feedback_p50_ms']:.2f}/"
            f"{level['feedback_p99_ms']:.2f} ms, learner caught up "
            f"{level['learner_catchup_s']:.1f} s after the level"
            for level in feedback_levels) + "."]
    best = target["level"]
    verdict = "**met**" if target["met"] else "**not met**"
    lines += [
        "",
        f"## Target: >= {TARGET_RPS:,.0f} route req/s with p99 < {TARGET_P99_MS:.0f} ms: "
        f"{verdict}",
        "",
        f"Judged at the {target['rule']}: concurrency {best['concurrency']}, "
        f"{best['req_per_s']:,.0f} req/s (>= {TARGET_RPS:,.0f}: "
        f"{_yes(target[f'route_req_per_s >= {TARGET_RPS:.0f}'])}), p99 {best['p99_ms']:.2f} ms "
        f"(< {TARGET_P99_MS:.0f}: {_yes(target[f'p99_ms < {TARGET_P99_MS:.0f}'])}). Peak "
        f"route-only throughput at any level: {target['peak_route_req_per_s']:,.0f} req/s; "
        f"lowest route-only p99: {target['lowest_route_p99_ms']:.2f} ms.",
    ]
    profile = result["profile"]
    if profile:
        level = profile["level"]
        lines += [
            "",
            "## Where the time goes",
            "",
            f"{profile['tool']}: route-only at concurrency {level['concurrency']} "
            f"({level['requests']} requests, {level['req_per_s']:,.0f} req/s, "
            f"{level['server_cpu_us_per_req']:,.0f} server CPU µs per request). Each row is the "
            "time a thread held the GIL in that code, per request (innermost matching frame, "
            "rules in `bench/http.py`), plus each thread's measured CPU outside those samples.",
            "",
            "| thread | what | CPU µs / request |",
            "|---|---|---:|",
        ]
        lines += [f"| {cost['thread']} | {cost['what']} | {cost['us_per_req']:,.0f} |"
                  for cost in profile["top_costs"] if cost["us_per_req"] >= 1]
    lines += [
        "",
        "## Reproduce",
        "",
        "```sh",
        "pip install -e .            # py-spy is pip-installed by the run if missing",
        "python -m bench.http --requests 3000 --concurrency 1,8,32,64 --out bench/results",
        "```",
        "",
        f"The server command: `{config['command']}`. The load generator is {config['client']}; "
        "each level stops after its request count or "
        f"{config['max_seconds_per_level']:.0f} s, whichever comes first. Any non-2xx answer "
        "counts as an error.",
        "",
    ]
    path.write_text("\n".join(lines))


def _outcome_flags(flags: dict[str, bool]) -> str:
    return ", ".join(f"{outcome} {'yes' if used else 'no'}" for outcome, used in flags.items())


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def write_plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for mode, marker in ((ROUTE, "o"), (ROUTE_FEEDBACK, "s")):
        levels = [level for level in result["levels"] if level["mode"] == mode]
        x = [level["concurrency"] for level in levels]
        left.plot(x, [level["req_per_s"] for level in levels], marker=marker, label=mode)
        right.plot(x, [level["p99_ms"] for level in levels], marker=marker, label=mode)
    left.axhline(TARGET_RPS, color="grey", linestyle="--", label="target")
    right.axhline(TARGET_P99_MS, color="grey", linestyle="--", label="target")
    for axis, label in ((left, "requests / s"), (right, "p99 latency (ms)")):
        axis.set_xscale("log", base=2)
        concurrency = sorted({level["concurrency"] for level in result["levels"]})
        axis.set_xticks(concurrency, [str(c) for c in concurrency])
        axis.set_xlabel("concurrent connections")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend()
    right.set_yscale("log")
    figure.suptitle("bandit-router serve: 1 uvicorn worker, LinUCB d=256, 8 models")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _concurrency(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("concurrency levels must be integers >= 1")
    return levels


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="routes per level")
    parser.add_argument("--concurrency", type=_concurrency, default=[1, 8, 32, 64])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--port", type=int, default=0, help="0: pick a free port")
    parser.add_argument("--max-seconds", type=float, default=20.0,
                        help="wall-clock cap per level (default 20)")
    parser.add_argument("--no-profile", dest="profile", action="store_false",
                        help="skip the py-spy profile")
    args = parser.parse_args(argv)
    # SIGTERM runs the cleanup (the server's process group is killed in `run`'s finally).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "http.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, args.out / "http.md")
    write_plot(result, args.out / "http.png")
    print((args.out / "http.md").read_text())
    print(f"wrote {args.out}/http.json, http.md, http.png")


if __name__ == "__main__":
    main()
