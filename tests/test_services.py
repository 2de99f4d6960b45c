"""The integration-test services themselves: PostgreSQL databases per test and the missing-service policy."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from tests.conftest import service_missing
from tests.services import create_database, drop_database


def database_names(url: str) -> set[str]:
    engine = create_engine(make_url(url).set(database="postgres"))
    try:
        with engine.connect() as conn:
            return set(conn.execute(text("select datname from pg_database")).scalars())
    finally:
        engine.dispose()


def test_postgres_url_is_a_fresh_empty_database(postgres_url: str) -> None:
    engine = create_engine(postgres_url)
    with engine.begin() as conn:
        assert conn.execute(text("select current_database()")).scalar() == make_url(postgres_url).database
        tables = conn.execute(text("select count(*) from pg_tables where schemaname = 'public'")).scalar()
        assert tables == 0
        conn.execute(text("create table t (x int)"))
    engine.dispose()


def test_a_created_database_is_unique_and_dropped(postgres_url: str) -> None:
    other = create_database(postgres_url)
    name = make_url(other).database
    assert name != make_url(postgres_url).database
    engine = create_engine(other)
    conn = engine.connect()  # still open: dropping must not wait for it
    assert name in database_names(other)
    drop_database(other)
    assert name not in database_names(postgres_url)
    conn.invalidate()
    engine.dispose()


def test_an_unreachable_server_raises_operational_error() -> None:
    with pytest.raises(OperationalError):
        create_database("postgresql+psycopg://postgres@127.0.0.1:1/test")


def test_a_missing_service_fails_under_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no broker"):
        service_missing("no broker")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="no broker"):
        service_missing("no broker")
