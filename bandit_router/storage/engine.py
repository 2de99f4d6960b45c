"""Database connections and schema migrations: `make_engine` and `migrate` (``alembic upgrade
head`` run from code; the repo has no alembic.ini)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.engine import make_url

from bandit_router.storage.errors import SchemaNotCurrentError, StorageError
from streams.embedded import sqlite_engine

# migrations/ sits beside the package directories at the repo root and is not itself a Python
# package, so it is found relative to this file. That works because bandit-router is installed
# editable (`pip install -e .`): this file stays in the checkout. A wheel install would need
# migrations/ moved under bandit_router/ as package data.
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"

SQLITE_BUSY_TIMEOUT_MS = 5000


def make_engine(url: str) -> Engine:
    """An engine for ``url``. SQLite gets WAL with ``synchronous=NORMAL`` (a committed transaction
    survives SIGKILL of the process; only a power cut can lose the last commits) and waits up to
    5 s for a competing writer instead of failing at once."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_pre_ping=True)
    database = parsed.database
    if database and database != ":memory:" and not database.startswith("file:"):
        folder = Path(database).expanduser().resolve().parent
        if not folder.is_dir():
            raise StorageError(
                f"folder {folder} for the SQLite database does not exist; create it or change "
                "database_url"
            )
    return sqlite_engine(url, busy_timeout_ms=SQLITE_BUSY_TIMEOUT_MS)


def alembic_config(connection: Connection | None = None) -> Config:
    """The Alembic configuration, built in code. With ``connection``, migrations run on it."""
    if not (MIGRATIONS_DIR / "env.py").is_file():
        raise StorageError(
            f"Alembic migrations not found at {MIGRATIONS_DIR}; install bandit-router from its "
            "checkout with `pip install -e .`"
        )
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def migrate(database: str | Engine) -> str:
    """Bring the schema at ``database`` (a URL or an engine) to the newest revision, creating it
    if the database is empty; a no-op when it is current. Returns that revision."""
    engine = make_engine(database) if isinstance(database, str) else database
    try:
        with engine.begin() as connection:
            config = alembic_config(connection)
            command.upgrade(config, "head")
        return head_revision()
    finally:
        if isinstance(database, str):
            engine.dispose()


upgrade = migrate


def head_revision() -> str:
    """The newest revision among the migrations (what `migrate` brings a database to)."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise StorageError(f"no migration revisions under {MIGRATIONS_DIR / 'versions'}")
    return head


def check_schema(engine: Engine) -> None:
    """Raise `SchemaNotCurrentError` unless the database is at `head_revision` (for services that
    must not migrate a shared database themselves)."""
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    expected = head_revision()
    if current != expected:
        raise SchemaNotCurrentError(
            f"database {engine.url.render_as_string(hide_password=True)} is at schema revision "
            f"{current or '(none)'}, this code needs {expected}; run `bandit-router db upgrade`"
        )


def prepare_schema(engine: Engine) -> None:
    """What a process opening the service's database does: a SQLite file (the embedded default,
    owned by one process) is migrated in place; any other database is shared, so it must already
    be current (`check_schema`)."""
    if engine.dialect.name == "sqlite":
        migrate(engine)
    else:
        check_schema(engine)
