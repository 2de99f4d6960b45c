"""The `bandit-router` command line: serve the router, run a learner, upgrade the database,
replay, train and synth, evaluate policies off-policy, and open the MLflow UI.

Usage errors print one line, ``bandit-router <command>: error: <what is wrong>``, and exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from threadpoolctl import threadpool_limits

from bandit_router.config import Settings
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


def _bus(text: str) -> tuple[str, str | None]:
    """``embedded`` or ``kafka://HOST:PORT[,HOST:PORT...]`` -> (bus, bootstrap servers)."""
    if text == "embedded":
        return "embedded", None
    scheme, _, servers = text.partition("://")
    if scheme != "kafka" or not servers:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a bus; use 'embedded' or kafka://HOST:PORT[,HOST:PORT...]"
        )
    return "kafka", servers


def _add_service_flags(parser: argparse.ArgumentParser) -> None:
    """Where the service's state and events live: flags shared by serve and learn."""
    parser.add_argument("--database", metavar="URL",
                        help="SQLAlchemy URL (default sqlite:///bandit-router.db in this folder; "
                             "e.g. postgresql+psycopg://user@host:5432/db)")
    parser.add_argument("--bus", type=_bus, metavar="BUS",
                        help="'embedded' (default: a log table in the SQLite database) or "
                             "kafka://HOST:PORT[,HOST:PORT...]")
    parser.add_argument("--config", metavar="FILE", help="TOML settings file")
def add_mlflow_flags(parser: argparse.ArgumentParser) -> None:
    """``--mlflow-uri URI`` (turns tracking on) and ``--no-mlflow``; see `mlflow_overrides`."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--mlflow-uri", metavar="URI",
                       help="MLflow tracking URI (default: sqlite:///<working dir>/mlflow.db)")
    group.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")


def mlflow_overrides(args: argparse.Namespace) -> dict[str, object]:
    """Settings overrides from `add_mlflow_flags`' flags (empty when neither was given)."""
    if args.no_mlflow:
        return {"mlflow_enabled": False}
    if args.mlflow_uri is not None:
        return {"mlflow_enabled": True, "mlflow_uri": args.mlflow_uri}
    return {}


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
    serve.add_argument("--policy", choices=POLICY_NAMES, help="the serving policy")
    serve.add_argument("--no-learner", action="store_true",
                       help="an API replica: no learner in this process; it reloads the newest "
                            "policy snapshots every reload_every_s (needs the Kafka bus)")
    _add_service_flags(serve)
    add_mlflow_flags(serve)

    learn = commands.add_parser(
        "learn",
        help="run the learner alone (distributed mode: Kafka bus, shared database)",
        description="Consume decisions and feedback, update every policy and checkpoint to the "
        "database. Several may run: one is active, the others stand by and take over from the "
        "stored offsets when it stops. Stop with Ctrl-C or SIGTERM (it commits first).",
    )
    _add_service_flags(learn)
    add_mlflow_flags(learn)

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
    add_mlflow_flags(replay)

    evaluate = commands.add_parser(
        "evaluate",
        help="off-policy evaluation of every policy on logged decisions (table + PNG)",
        description="Estimate what each policy's current snapshot would have earned on the logged "
        "decisions (IPS, SNIPS, doubly robust, with standard errors).",
    )
    evaluate.add_argument("--since", metavar="WHEN",
                          help="only decisions from then on: an age (30m, 2h, 7d) or an ISO "
                               "date/time (2024-12-01, 2024-12-01T08:00; UTC unless a zone is "
                               "given); default: all")
    evaluate.add_argument("--out", metavar="DIR",
                          help="also write evaluation.json, evaluation.md, evaluation.png here")
    _add_service_flags(evaluate)

    ui = commands.add_parser("ui", help="start the MLflow UI on the tracking store")
    ui.add_argument("--mlflow-uri", metavar="URI",
                    help="tracking store (default: sqlite:///<working dir>/mlflow.db)")
    ui.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    ui.add_argument("--port", type=_port, default=5000, help="TCP port (default 5000)")
    ui.add_argument("--workers", type=_positive_int, default=1,
                    help="server processes (default 1; each takes seconds to start)")
    ui.add_argument("--config", metavar="FILE", help="TOML settings file")

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
    settings = _settings(args, **mlflow_overrides(args))
    results = replay(dataset, config, progress=not args.quiet)
    out = write_report(results, args.out, title=f"replay of {args.data}")
    print((out / "results.md").read_text())
    print(f"wrote {out}/results.json, results.md, regret.png, frontier.png")
    if settings.mlflow_enabled:  # type: ignore[attr-defined]
        from bandit_router.tracking import log_replay

        uri = settings.mlflow_uri  # type: ignore[attr-defined]
        runs = log_replay(results, uri, args.data)
        print(f"logged {len(runs)} MLflow runs to {uri} (see them with: bandit-router ui)")


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
    return load_settings(getattr(args, "config", None), **overrides)


def _service_settings(args: argparse.Namespace, **flags: object) -> Settings:
    bus, bootstrap = args.bus or (None, None)
    settings = _settings(
        args, database_url=args.database, bus=bus, kafka_bootstrap=bootstrap, **flags
    )
    return settings  # type: ignore[return-value]


def _serve(args: argparse.Namespace) -> None:
    import gc

    import uvicorn

    from bandit_router.api import create_app
    from bandit_router.service import RouterService

    settings = _service_settings(
        args, host=args.host, port=args.port, serving_policy=args.policy, **mlflow_overrides(args)
    )
    if args.no_learner and settings.bus == "embedded":
        raise UsageError(
            "--no-learner needs the Kafka bus (--bus kafka://HOST:PORT): with the embedded bus "
            "the learner runs in the one process that owns the SQLite database"
        )
    service = RouterService.open(settings, run_learner=not args.no_learner)
    app = create_app(settings, service=service)
    loop, http = server_implementation()
    # What exists now (modules, the app, the policies, MLflow...) lives as long as the process:
    # out of the cyclic GC's sight, a full collection no longer walks ~150,000 objects, which
    # stalled every request for ~90 ms. (Here, not in create_app: it is the process's choice.)
    gc.freeze()
    # One worker: the embedded learner and its policies live in this process.
    uvicorn.run(
        app,
        host=settings.host,  # type: ignore[attr-defined]
        port=settings.port,  # type: ignore[attr-defined]
        workers=1,
        loop=loop,
        http=http,
        ws="none",
        access_log=False,
        log_level="info",
    )


def server_implementation() -> tuple[str, str]:
    """uvicorn's (event loop, HTTP parser): uvloop and httptools when installed (both are
    dependencies; uvloop is not built for Windows), else asyncio and h11, which cost more CPU per
    request (bench/results/http.md)."""
    from importlib.util import find_spec

    loop = "uvloop" if find_spec("uvloop") is not None else "asyncio"
    http = "httptools" if find_spec("httptools") is not None else "h11"
    print(f"bandit-router serve: {loop} event loop, {http} HTTP parser", file=sys.stderr)
    return loop, http


def _learn(args: argparse.Namespace) -> None:
    import logging
    import signal
    import threading

    from bandit_router.featurizer import Featurizer
    from bandit_router.learner import GROUP
    from bandit_router.learner_runner import ActiveLearner
    from bandit_router.service import open_bus
    from bandit_router.storage import Storage, make_engine, prepare_schema
    from bandit_router.tracking import LearnerTracker
    from streams.outbox import OutboxBus

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)  # its INFO is every connection's story
    settings = _service_settings(args, **mlflow_overrides(args))
    engine = make_engine(settings.database_url)
    prepare_schema(engine)
    bus = OutboxBus(open_bus(settings, engine), engine)
    storage = Storage(engine)
    tracker = LearnerTracker.for_learner(settings, storage, GROUP)
    learner = ActiveLearner(
        settings, storage, bus, Featurizer(settings.feature_dim), tracker=tracker
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    # The URL's repr hides its password.
    print(f"learner {learner.holder}: {settings.bus} bus, database {engine.url!r}", flush=True)
    try:
        learner.run(stop)
    finally:
        bus.close()
        engine.dispose()


def _db(args: argparse.Namespace) -> None:
    from bandit_router.storage import migrate

    settings = _settings(args, database_url=args.database)
    from sqlalchemy.engine import make_url

    url = settings.database_url  # type: ignore[attr-defined]
    revision = migrate(url)
    shown = make_url(url).render_as_string(hide_password=True)
    print(f"database {shown} is at schema revision {revision}")


def _evaluate(args: argparse.Namespace) -> None:
    from bandit_router.evaluate import evaluate, markdown, parse_since, read_logged, write_evaluation
    from bandit_router.featurizer import Featurizer
    from bandit_router.policy_set import PolicySet
    from bandit_router.service import open_bus, use_stored_serving_policy
    from bandit_router.storage import Storage, check_schema, make_engine

    settings = _service_settings(args)
    since = None if args.since is None else parse_since(args.since)
    engine = make_engine(settings.database_url)
    try:
        check_schema(engine)
        storage = Storage(engine)
        policies = PolicySet.load(
            settings, Featurizer(settings.feature_dim), storage.list_models(), storage.newest_snapshots()
        )
        use_stored_serving_policy(policies, storage)
        bus = open_bus(settings, engine)
        try:
            results = evaluate(read_logged(bus), policies, since)
        finally:
            bus.close()
    finally:
        engine.dispose()
    print(markdown(results))
    if args.out:
        out = write_evaluation(results, args.out)
        print(f"wrote {out}/evaluation.json, evaluation.md, evaluation.png")


def _ui(args: argparse.Namespace) -> None:
    settings = _settings(args, mlflow_uri=args.mlflow_uri)
    uri = settings.mlflow_uri  # type: ignore[attr-defined]
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
               "--host", args.host, "--port", str(args.port), "--workers", str(args.workers)]
    print(f"MLflow UI on http://{args.host}:{args.port} for {uri} (Ctrl-C stops it)", flush=True)
    os.execv(sys.executable, command)


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
            commands = {
                "replay": _replay,
                "train": _train,
                "synth": _synth,
                "serve": _serve,
                "learn": _learn,
                "db": _db,
                "evaluate": _evaluate,
                "ui": _ui,
            }
            commands[args.command](args)
    except (UsageError, DatasetError, ValueError, OSError, StorageError) as err:
        message = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
        print(f"{command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
