"""`bandit-router serve`, `learn` and `db upgrade`: bad flags or settings exit 2 with one line, before any
server starts; `db upgrade` brings a database to the newest schema."""

from __future__ import annotations

import sqlite3

import pytest

from bandit_router.cli import main
from bandit_router.storage import head_revision


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["serve", "--port", "0"], {}, "argument --port: 0 must be >= 1"),
        (["serve", "--port", "70000"], {}, "70000 is not a TCP port"),
        (["serve", "--port", "http"], {}, "'http' is not an integer"),
        (["serve", "--policy", "oracle"], {}, "invalid choice: 'oracle'"),
        (["serve", "--database", "not a url"], {}, "is not a SQLAlchemy database URL"),
        (["serve", "--database", "sqlite:////no/such/folder/x.db"], {}, "does not exist"),
        (["serve", "--config", "missing.toml"], {}, "config file missing.toml (from --config)"),
        (["serve", "--frobnicate"], {}, "unrecognized arguments: --frobnicate"),
        (["serve"], {"BANDIT_ROUTER_FEATURE_DIM": "8"}, "feature_dim"),
        (["serve", "--bus", "kafka"], {}, "'kafka' is not a bus; use 'embedded' or kafka://HOST:PORT"),
        (["serve", "--bus", "redis://x:1"], {}, "'redis://x:1' is not a bus"),
        (["serve", "--no-learner"], {}, "--no-learner needs the Kafka bus"),
        (["learn", "--bus", "kafka://"], {}, "'kafka://' is not a bus"),
        (["learn", "--database", "not a url"], {}, "is not a SQLAlchemy database URL"),
        (["db"], {}, "the following arguments are required: db_command"),
        (["db", "upgrade", "--database", "nope"], {}, "is not a SQLAlchemy database URL"),
    ],
)
def test_bad_flags_exit_2_with_one_line(tmp_path, monkeypatch, capsys, args, env, message):
    monkeypatch.chdir(tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bandit-router")
    assert message in err
    assert "Traceback" not in err


def test_db_upgrade_creates_the_schema(tmp_path, capsys):
    database = tmp_path / "router.db"
    assert main(["db", "upgrade", "--database", f"sqlite:///{database}"]) == 0
    assert f"is at schema revision {head_revision()}" in capsys.readouterr().out
    with sqlite3.connect(database) as db:
        tables = {row[0] for row in db.execute("select name from sqlite_master where type='table'")}
    assert {"event_log", "catalog_models", "policy_snapshots", "applied_feedback"} <= tables
    assert main(["db", "upgrade", "--database", f"sqlite:///{database}"]) == 0  # idempotent
