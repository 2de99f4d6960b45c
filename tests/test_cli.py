"""The command line: replay writes the documented results, and bad input exits 2 with one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bandit_router.cli import main
from tests.conftest import SAMPLE_DATA

HEADER = "sample_id,eval_name,prompt,m1,m2,m1|total_cost,m2|total_cost\n"


def run(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "data.csv"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda tmp: ["replay", str(tmp / "nope.csv")], "no such file"),
        (lambda tmp: ["replay", write(tmp, "prompt,a,b\nhi,1,0\n")], "no model columns"),
        (lambda tmp: ["replay", write(tmp, HEADER + "1,t,hi,good,0.5,0.1,0.01\n")], "not a number"),
        (lambda tmp: ["replay", write(tmp, HEADER + "1,t,hi,1.5,0.5,0.1,0.01\n")], "in [0, 1]"),
        (lambda tmp: ["replay", write(tmp, HEADER + "1,t,hi,1,0.5,-0.1,0.01\n")], ">= 0"),
        (lambda tmp: ["replay", str(SAMPLE_DATA), "--cost-weights", "0.1,1.5"], "outside [0, 1]"),
        (lambda tmp: ["replay", str(SAMPLE_DATA), "--cost-weights", "-0.2"], "outside [0, 1]"),
        (lambda tmp: ["replay", str(SAMPLE_DATA), "--policies", "linucb,magic"], "unknown policy magic"),
        (lambda tmp: ["replay", str(SAMPLE_DATA), "--limit", "0"], "must be >= 1"),
        (lambda tmp: ["synth", "--models", "12"], "models"),
        (lambda tmp: ["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, make_args, message):
    code, _, err = run(make_args(tmp_path), capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("bandit-router")
    assert message in err
    assert "Traceback" not in err


def test_replay_writes_the_documented_results(tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, _ = run(
        ["replay", str(SAMPLE_DATA), "--policies", "linucb,lints,random", "--cost-weights",
         "0.1,0.5", "--seed", "3", "--limit", "150", "--out", str(out), "--quiet"], capsys
    )
    assert code == 0 and "cost weight 0.5" in stdout
    results = json.loads((out / "results.json").read_text())
    assert results["rows"] == 150 and results["cost_scale"] > 0
    assert {(r["cost_weight"], r["policy"]) for r in results["runs"]} == {
        (w, p) for w in (0.1, 0.5) for p in ("linucb", "lints", "random")
    }
    oracle = {o["cost_weight"]: o["utility"] for o in results["oracle"]}
    for run_ in results["runs"]:
        assert set(run_) >= {"cost_weight", "policy", "utility", "quality", "cost", "regret", "choices"}
        assert sum(run_["choices"].values()) == 150
        # cumulative regret against the per-row oracle == rows * (oracle mean - policy mean)
        assert run_["regret"] == pytest.approx(150 * (oracle[run_["cost_weight"]] - run_["utility"]))
        assert run_["regret"] >= 0
    assert len(results["models"]) == 4 and len(results["task_best"]) == 2
    for entry in results["models"] + results["task_best"]:
        assert entry["utility"] <= oracle[entry["cost_weight"]] + 1e-12
    for name in ("results.md", "regret.png", "frontier.png"):
        assert (out / name).stat().st_size > 1000
    assert "per-task best" in (out / "results.md").read_text()


def test_same_seed_same_results(tmp_path, capsys):
    args = ["replay", str(SAMPLE_DATA), "--limit", "80", "--quiet", "--cost-weights", "0.3"]
    run(args + ["--out", str(tmp_path / "a")], capsys)
    run(args + ["--out", str(tmp_path / "b")], capsys)
    assert (tmp_path / "a" / "results.json").read_text() == (tmp_path / "b" / "results.json").read_text()


def test_console_script_entry_point(tmp_path):
    out = tmp_path / "synth.csv"
    done = subprocess.run(
        [sys.executable, "-m", "bandit_router.cli", "synth", "--models", "3", "--rows", "50",
         "--out", str(out)], capture_output=True, text=True, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert out.read_text().count("\n") >= 51
