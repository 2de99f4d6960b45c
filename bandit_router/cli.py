"""The `bandit-router` command line: replay and synth (more commands arrive with the service).

Usage errors print one line, ``bandit-router <command>: error: <what is wrong>``, and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from bandit_router.dataset import DatasetError, load_routing_csv
from bandit_router.policy_factory import POLICY_NAMES

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input from the user: reported in one line with exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _cost_weights(text: str) -> list[float]:
    weights = []
    for part in text.split(","):
        try:
            weight = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"cost weight {part!r} is not a number") from None
        if not 0.0 <= weight <= 1.0:
            raise argparse.ArgumentTypeError(f"cost weight {weight:g} is outside [0, 1]")
        weights.append(weight)
    return weights


def _policy_names(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [n for n in names if n not in POLICY_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown policy {', '.join(unknown) or '(none)'}; choose from {', '.join(POLICY_NAMES)}"
        )
    return names


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value:g} must be > 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bandit-router", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    replay = commands.add_parser("replay", help="replay a routing dataset through online policies")
    replay.add_argument("data", help="CSV in RouterBench wide layout")
    replay.add_argument("--policies", type=_policy_names, default=["linucb", "lints", "random"],
                        help=f"comma-separated, from {', '.join(POLICY_NAMES)}")
    replay.add_argument("--cost-weights", type=_cost_weights, default=[0.1, 0.2],
                        help="comma-separated cost weights in [0, 1] (default 0.1,0.2)")
    replay.add_argument("--seed", type=int, default=0, help="row order and sampling seed")
    replay.add_argument("--out", default="replay-out", help="output folder (default replay-out)")
    replay.add_argument("--limit", type=_positive_int, help="replay only the first N rows of the order")
    replay.add_argument("--cost-scale", type=_positive_float,
                        help="USD per call that counts as full cost (default: mean cost of the "
                             "dearest model in the file)")
    replay.add_argument("--dim", type=_positive_int, default=256, help="feature dimension")
    replay.add_argument("--quiet", action="store_true", help="no progress bar")

    synth = commands.add_parser("synth", help="write a synthetic routing dataset")
    synth.add_argument("--models", type=int, default=6, help="number of models, 2 to 8")
    synth.add_argument("--rows", type=_positive_int, default=20000)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--out", default="synth.csv")
    return parser


def _replay(args: argparse.Namespace) -> None:
    from bandit_router.replay import ReplayConfig, replay
    from bandit_router.report import write_report

    dataset = load_routing_csv(args.data)
    config = ReplayConfig(
        policies=args.policies,
        cost_weights=args.cost_weights,
        seed=args.seed,
        limit=args.limit,
        cost_scale=args.cost_scale,
        dim=args.dim,
    )
    results = replay(dataset, config, progress=not args.quiet)
    out = write_report(results, args.out, title=f"replay of {args.data}")
    print((out / "results.md").read_text())
    print(f"wrote {out}/results.json, results.md, regret.png, frontier.png")


def _synth(args: argparse.Namespace) -> None:
    from bandit_router.synth import generate, write_csv

    data = generate(models=args.models, rows=args.rows, seed=args.seed)
    write_csv(data, args.out)
    print(f"wrote {args.out}: {args.rows} rows, models {', '.join(data.models)}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `bandit-router` console script; returns the exit code."""
    parser = build_parser()
    command = "bandit-router"
    try:
        args = parser.parse_args(argv)
        command = f"bandit-router {args.command}"
        {"replay": _replay, "synth": _synth}[args.command](args)
    except (UsageError, DatasetError, ValueError, OSError) as err:
        print(f"{command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
