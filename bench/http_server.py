"""The HTTP benchmark's server side: `bandit-router serve` pinned to its core, its catalog and
learner, and its CPU per thread group from /proc.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx

POLICY, FEATURE_DIM = "linucb", 256
SERVER_CORE, CLIENT_CORE = 0, 1


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
