"""Screenshot of the MLflow UI's regret chart for the README: replays a synthetic dataset into a fresh
SQLite tracking store, starts ``mlflow server`` on loopback, and captures the chart with headless
Chromium driven by chromedriver (plain W3C WebDriver over HTTP).

Run: ``python -m bench.mlflow_screenshot`` (needs the Debian packages chromium and chromium-driver).
Writes bench/results/mlflow_regret.png.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from threadpoolctl import threadpool_limits

from bandit_router.dataset import load_routing_csv
from bandit_router.replay import ReplayConfig, replay
from bandit_router.synth import generate, write_csv
from bandit_router.tracking import REPLAY_EXPERIMENT, log_replay, mlflow_client

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "results" / "mlflow_regret.png"
# Without these, Chromium's background connections fail on these machines and it stalls.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1280,900", "--hide-scrollbars",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, ConnectionError, OSError):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer within {timeout_s:.0f} s") from None
            time.sleep(0.25)


@contextmanager
def process_group(command: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` in its own session; on exit stop its whole process group."""
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


class WebDriver:
    """The few W3C WebDriver calls this script needs, against a running chromedriver."""

    def __init__(self, base: str, user_data_dir: Path) -> None:
        self.base = base
        options = {"binary": shutil.which("chromium") or "chromium",
                   "args": [*CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}"]}
        body = {"capabilities": {"alwaysMatch": {"goog:chromeOptions": options}}}
        self.session = self._call("POST", "/session", body)["sessionId"]

    def get(self, url: str) -> None:
        self._call("POST", f"/session/{self.session}/url", {"url": url})

    def script(self, source: str) -> Any:
        return self._call("POST", f"/session/{self.session}/execute/sync", {"script": source, "args": []})

    def screenshot(self) -> bytes:
        return base64.b64decode(self._call("GET", f"/session/{self.session}/screenshot"))

    def quit(self) -> None:
        self._call("DELETE", f"/session/{self.session}")

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())["value"]


def log_synthetic_replay(uri: str, rows: int, work: Path) -> tuple[str, list[str]]:
    """Replay a seeded synthetic dataset (LinUCB, LinTS, random at cost weight 0.2) into ``uri``."""
    data = work / f"synth-{rows}.csv"
    write_csv(generate(models=4, rows=rows, seed=0), data)
    config = ReplayConfig(policies=("linucb", "lints", "random"), cost_weights=(0.2,))
    with threadpool_limits(limits=1, user_api="blas"):
        results = replay(load_routing_csv(data), config, progress=False)
    runs = log_replay(results, uri, data.name)
    experiment = mlflow_client(uri).get_experiment_by_name(REPLAY_EXPERIMENT)
    return str(experiment.experiment_id), runs


# Plotly draws one trace group per run once the metric history has loaded.
TRACES = "return document.querySelectorAll('.js-plotly-plot .scatterlayer .trace').length"
# The assistant side panel (open on first load) covers a quarter of the page: press its Close.
CLOSE_ASSISTANT = """
const close = [...document.querySelectorAll('button[aria-label="Close"]')].find(
    b => b.getBoundingClientRect().x > window.innerWidth / 2);
if (close) close.click();
return close !== undefined;
"""


def wait_for_chart(browser: WebDriver, traces: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while browser.script(TRACES) < traces:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the regret chart did not draw {traces} lines in {timeout_s:.0f} s")
        time.sleep(1)
    time.sleep(2)  # let the drawing settle


def chart_url(server: str, experiment: str, runs: list[str]) -> str:
    """The UI's metric page: the regret of every replayed policy against rows seen."""
    query = {
        "runs": json.dumps(runs),
        "metric": json.dumps("regret"),
        "experiments": json.dumps([experiment]),
        "plot_metric_keys": json.dumps(["regret"]),
        "plot_layout": "{}",
        "x_axis": "step",
        "y_axis_scale": "linear",
        "line_smoothness": "1",
        "show_point": "false",
        "deselected_curves": "[]",
        "last_linear_y_axis_range": "[]",
    }
    text = "&".join(f"{k}={quote(v)}" for k, v in query.items())
    return f"{server}/#/metric/regret?{text}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4000, help="synthetic rows to replay")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--wait", type=float, default=120.0, help="most seconds to wait for the chart")
    args = parser.parse_args(argv)
    driver_binary = shutil.which("chromedriver")
    if driver_binary is None or shutil.which("chromium") is None:
        print("needs chromium and chromedriver: apt-get install chromium chromium-driver", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="mlflow-shot-") as tmp:
        work = Path(tmp)
        uri = f"sqlite:///{work / 'mlflow.db'}"
        experiment, runs = log_synthetic_replay(uri, args.rows, work)
        port, driver_port = free_port(), free_port()
        server = f"http://127.0.0.1:{port}"
        mlflow_command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
                          "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                          "--default-artifact-root", (work / "artifacts").as_uri()]
        with process_group(mlflow_command, work / "mlflow.log"), \
                process_group([driver_binary, f"--port={driver_port}"], work / "chromedriver.log"):
            wait_http(f"{server}/health", 90)
            wait_http(f"http://127.0.0.1:{driver_port}/status", 30)
            browser = WebDriver(f"http://127.0.0.1:{driver_port}", work / "chromium-profile")
            try:
                browser.get(chart_url(server, experiment, runs))
                wait_for_chart(browser, len(runs), args.wait)
                browser.script(CLOSE_ASSISTANT)
                time.sleep(2)  # the panel closes and the chart widens
                png = browser.screenshot()
            finally:
                browser.quit()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(png)
    print(f"wrote {args.out} ({len(png)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
