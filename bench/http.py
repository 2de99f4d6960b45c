"""End-to-end HTTP benchmark of `bandit-router serve`: one uvicorn worker, LinUCB d=256, 8 models,
loaded by a separate pinned client process at several concurrency levels, plus a py-spy profile.

Run ``python -m bench.http [--requests 3000] [--concurrency 1,8,32,64] [--out bench/results]``;
writes ``http.json``, ``http.md`` and ``http.png`` under ``--out``. The profile needs py-spy (PyPI),
which the run installs with pip if it is missing (``--no-profile`` skips it).

The parts: ``bench.http_load`` (workload and the client process), ``bench.http_server`` (the
server process and its CPU per thread), ``bench.http_profile`` (py-spy and where the time goes);
this module runs the levels, judges the target and writes the report.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from tqdm import tqdm

from bench.http_load import (
    COST_WEIGHTS,
    ROUTE,
    ROUTE_FEEDBACK,
    build_prompts,
    route_bodies,
    run_level,
    set_catalog,
    summarise,
)
from bench.http_profile import ensure_py_spy, run_profile
from bench.http_server import (
    CLIENT_CORE,
    ENDPOINT,
    FEATURE_DIM,
    LEARNER,
    LOOP,
    POLICY,
    SERVER_CORE,
    cpu_seconds,
    free_port,
    server_stack,
    serving_content_model,
    serving_version,
    start_server,
    stop_process_group,
    wait_learner,
    wait_ready,
)

WARMUP = 300  # route+feedback pairs before the first timed level
TARGET_RPS, TARGET_P99_MS = 1000.0, 20.0
IDLE_PROBE_S = 2.0


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
