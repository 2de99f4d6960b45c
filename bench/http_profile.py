"""Where the HTTP benchmark's server time goes: a py-spy profile of one level, its samples
put into categories per thread.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.http_load import ROUTE, run_level, summarise
from bench.http_server import ENDPOINT, LEARNER, LOOP, Server, thread_group

PROFILE_RATE_HZ = 1000


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
    ("service + route code (service.py, api.py, json_route.py)",
     lambda f, n: "bandit_router/service.py" in f or "bandit_router/api.py" in f
     or "bandit_router/json_route.py" in f),
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
