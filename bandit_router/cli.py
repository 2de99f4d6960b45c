"""The `bandit-router` command line: serve the router, upgrade its database, replay, train and synth.

Usage errors print one line, ``bandit-router <command>: error: <what is wrong>``, and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from threadpoolctl import threadpool_limits

from bandit_router.dataset import DatasetError, load_routing_csv
from bandit_router.policy_factory import POLICY_NAMES
from bandit_router.storage import StorageError

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
            f"unknown policy {', '.join(unknown) or '(none)'}; "
            f"choose from {', '.join(POLICY_NAMES)}"
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


def _port(text: str) -> int:
    port = _positive_int(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port (1-65535)")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bandit-router", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    serve = commands.add_parser(
        "serve",
        help="run the HTTP API with its learner (embedded: SQLite file, in-process bus)",
        description="Serve the router. Flags override the environment (BANDIT_ROUTER_*), which "
        "overrides the --config TOML file.",
    )
    serve.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, help="TCP port (default 8000)")
    serve.add_argument("--database", metavar="URL",
                       help="SQLAlchemy URL (default sqlite:///bandit-router.db in this folder)")
    serve.add_argument("--policy", choices=POLICY_NAMES, help="the serving policy")
    serve.add_argument("--config", metavar="FILE", help="TOML settings file")

    database = commands.add_parser("db", help="database maintenance")
    db_commands = database.add_subparsers(dest="db_command", required=True, parser_class=_Parser)
    upgrade = db_commands.add_parser("upgrade", help="migrate the schema to the newest revision")
    upgrade.add_argument("--database", metavar="URL", help="SQLAlchemy URL (default from config)")
    upgrade.add_argument("--config", metavar="FILE", help="TOML settings file")

    replay = commands.add_parser("replay", help="replay a routing dataset through online policies")
    replay.add_argument("data", help="CSV in RouterBench wide layout")
    replay.add_argument("--policies", type=_policy_names, default=["linucb", "lints", "random"],
                        help=f"comma-separated, from {', '.join(POLICY_NAMES)}")
    replay.add_argument("--cost-weights", type=_cost_weights, default=[0.1, 0.2],
                        help="comma-separated cost weights in [0, 1] (default 0.1,0.2)")
    replay.add_argument("--seed", type=int, default=0, help="row order and sampling seed")
    replay.add_argument("--out", default="replay-out", help="output folder (default replay-out)")
    replay.add_argument("--limit", type=_positive_int,
                        help="replay only the first N rows of the order")
    replay.add_argument("--cost-scale", type=_positive_float,
                        help="USD per call that counts as full cost (default: mean cost of the "
                             "dearest model in the file)")
    replay.add_argument("--dim", type=_positive_int, default=256, help="feature dimension")
    replay.add_argument("--barp-snapshot", metavar="PATH",
                        help="start BaRP from this snapshot (bandit-router train barp) and keep "
                             "learning online")
    replay.add_argument("--quiet", action="store_true", help="no progress bar")

    train = commands.add_parser(
        "train", help="warm-start a policy from a routing dataset under bandit feedback"
    )
    train.add_argument("policy", choices=["barp"], help="the policy to train")
    train.add_argument("data", help="CSV in RouterBench wide layout")
    train.add_argument("--out", required=True, help="snapshot file to write")
    train.add_argument("--cost-weights", type=_cost_weights,
                       help="comma-separated cost weights to sample from (default: preferences "
                            "drawn uniformly from the simplex)")
    train.add_argument("--rows", type=_positive_int, help="train on the first N rows only")
    train.add_argument("--epochs", type=_positive_int, default=1, help="passes over the rows")
    train.add_argument("--seed", type=int, default=0, help="initialisation and sampling seed")
    train.add_argument("--cost-scale", type=_positive_float,
                       help="USD per call that counts as full cost (default: mean cost of the "
                            "dearest model in the file)")
    train.add_argument("--dim", type=_positive_int, default=256, help="feature dimension")
    train.add_argument("--quiet", action="store_true", help="no progress bar")

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
    barp_state = None
    if args.barp_snapshot is not None:
        from bandit_router.barp_training import load_snapshot

        barp_state = load_snapshot(args.barp_snapshot).state()
    config = ReplayConfig(
        policies=args.policies,
        cost_weights=args.cost_weights,
        seed=args.seed,
        limit=args.limit,
        cost_scale=args.cost_scale,
        dim=args.dim,
        barp_state=barp_state,
    )
    results = replay(dataset, config, progress=not args.quiet)
    out = write_report(results, args.out, title=f"replay of {args.data}")
    print((out / "results.md").read_text())
    print(f"wrote {out}/results.json, results.md, regret.png, frontier.png")


def _train(args: argparse.Namespace) -> None:
    from bandit_router.barp_training import TrainConfig, save_snapshot, train_barp

    config = TrainConfig(
        cost_weights=args.cost_weights,
        rows=args.rows,
        epochs=args.epochs,
        seed=args.seed,
        cost_scale=args.cost_scale,
        dim=args.dim,
    )
    policy = train_barp(load_routing_csv(args.data), config, progress=not args.quiet)
    save_snapshot(policy, args.out)
    print(f"wrote {args.out}: BaRP over {', '.join(policy.arms)} after {policy.updates} updates")


def _synth(args: argparse.Namespace) -> None:
    from bandit_router.synth import generate, write_csv

    data = generate(models=args.models, rows=args.rows, seed=args.seed)
    write_csv(data, args.out)
    print(f"wrote {args.out}: {args.rows} rows, models {', '.join(data.models)}")


def _settings(args: argparse.Namespace, **flags: object) -> object:
    from bandit_router.config import load_settings

    overrides = {name: value for name, value in flags.items() if value is not None}
    return load_settings(args.config, **overrides)


def _serve(args: argparse.Namespace) -> None:
    import uvicorn

    from bandit_router.api import create_app

    settings = _settings(
        args,
        host=args.host,
        port=args.port,
        database_url=args.database,
        serving_policy=args.policy,
    )
    app = create_app(settings)  # type: ignore[arg-type]
    # One worker: the embedded learner and its policies live in this process.
    uvicorn.run(
        app,
        host=settings.host,  # type: ignore[attr-defined]
        port=settings.port,  # type: ignore[attr-defined]
        workers=1,
        access_log=False,
        log_level="info",
    )


def _db(args: argparse.Namespace) -> None:
    from bandit_router.storage import migrate

    settings = _settings(args, database_url=args.database)
    url = settings.database_url  # type: ignore[attr-defined]
    revision = migrate(url)
    print(f"database {url} is at schema revision {revision}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `bandit-router` console script; returns the exit code."""
    parser = build_parser()
    command = "bandit-router"
    try:
        args = parser.parse_args(argv)
        command = f"bandit-router {args.command}"
        # The policies' matrices are small (d ~ 257): a multi-threaded BLAS spends more on waking
        # threads than on the arithmetic, up to 10x slower on a busy machine. One thread each.
        with threadpool_limits(limits=1, user_api="blas"):
            commands = {"replay": _replay, "train": _train, "synth": _synth, "serve": _serve, "db": _db}
            commands[args.command](args)
    except (UsageError, DatasetError, ValueError, OSError, StorageError) as err:
        message = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
        print(f"{command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
