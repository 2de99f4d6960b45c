"""The service's settings: one typed `Settings` object read from init arguments, the environment
(prefix ``BANDIT_ROUTER_``) and an optional TOML file, in that order of precedence.

>>> Settings(feature_dim=64).feature_dim
64
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from bandit_router.policy_factory import POLICY_NAMES

ENV_PREFIX = "BANDIT_ROUTER_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"

# `load_settings(config_file=...)` (the CLI's --config) hands its path to the TOML source through
# this variable rather than through os.environ, so loading settings never mutates the process.
_explicit_config_file: ContextVar[Path | None] = ContextVar("explicit_config_file", default=None)


def default_mlflow_uri(directory: Path) -> str:
    """The local MLflow tracking store: ``sqlite:///<directory>/mlflow.db`` with an absolute path.

    >>> default_mlflow_uri(Path("/srv/router"))
    'sqlite:////srv/router/mlflow.db'
    """
    return f"sqlite:///{(directory / 'mlflow.db').absolute()}"


class ConfigError(ValueError):
    """The configuration (environment, TOML file, arguments) is invalid; the message says where."""


class Settings(BaseSettings):
    """Everything an operator can set. Field names double as TOML keys and, upper-cased with the
    ``BANDIT_ROUTER_`` prefix, as environment variables (``BANDIT_ROUTER_FEATURE_DIM=128``)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",  # a misspelt TOML key is an error, not a silently ignored line
        validate_default=True,
    )

    database_url: str = Field(
        "sqlite:///bandit-router.db",
        description="SQLAlchemy URL of the database holding the catalog, snapshots, offsets and "
        "join state (and the embedded bus's log); e.g. postgresql+psycopg://user@host/db.",
    )
    bus: Literal["embedded", "kafka"] = Field(
        "embedded",
        description="Event bus: 'embedded' (a durable log table in the database) or 'kafka'.",
    )
    kafka_bootstrap: str = Field(
        "127.0.0.1:9092",
        description="Comma-separated host:port list of Kafka brokers (used when bus = 'kafka').",
    )
    kafka_partitions: int = Field(
        1,
        ge=1,
        description="Partitions of each topic the service creates (existing topics are kept). "
        "One active learner reads every partition; with one, the log has a total order and the "
        "learned state is reproducible from it; with more, updates across partitions follow the "
        "order of delivery (still each exactly once).",
    )
    kafka_timeout_s: float = Field(
        5.0,
        gt=0.0,
        description="How long a publish may wait for the broker before the event goes to the "
        "outbox (and /readyz reports the bus degraded).",
    )
    serving_policy: str = Field(
        "linucb", description="The policy whose choices are served; must be one of `policies`."
    )
    policies: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["linucb", "lints", "egreedy", "random"],
        description="Every policy that learns from the event stream (all but the serving one in "
        "shadow). From the environment: a JSON list or comma-separated names.",
    )
    feature_dim: int = Field(
        256, ge=32, description="Length of the context vector the featurizer produces."
    )
    default_cost_weight: float = Field(
        0.2,
        ge=0.0,
        le=1.0,
        description="Cost weight c of requests that send no preference: w = (1 - c, c, 0).",
    )
    cost_scale: float | None = Field(
        None,
        gt=0.0,
        description="USD cost that counts as the full cost penalty in the utility; None: the "
        "catalog's largest per-call price estimate.",
    )
    latency_scale_ms: float = Field(
        10_000.0, gt=0.0, description="Latency (ms) that counts as the full latency penalty."
    )
    floor: float = Field(
        0.005,
        ge=0.0,
        lt=1.0,
        description="Smallest probability any candidate model keeps (keeps off-policy "
        "evaluation valid).",
    )
    join_horizon_s: float = Field(
        3600.0,
        gt=0.0,
        description="How long feedback waits for its decision before going to dead letters.",
    )
    decision_ttl_s: float = Field(
        7 * 86400.0,
        gt=0.0,
        description="How long the learner keeps a decision waiting for its feedback (and "
        "remembers applied feedback ids, so a redelivery is ignored); at least join_horizon_s.",
    )
    max_pending_decisions: int = Field(
        100_000,
        ge=1,
        description="The most decisions kept waiting for feedback, in memory and in the join "
        "state (a decision takes ~3-10 KB at feature_dim 256); beyond it the oldest is forgotten "
        "first, and feedback that comes for it later is dead-lettered.",
    )
    snapshot_every_events: int = Field(
        20_000, ge=1, description="The learner checkpoints after this many records..."
    )
    snapshot_every_s: float = Field(
        2.0, gt=0.0, description="...or after this many seconds, whichever comes first."
    )
    learner_lease_s: float = Field(
        10.0,
        gt=0.0,
        description="A standby learner takes over this long after the active one stopped "
        "renewing its lease (checkpoints renew it, and an idle learner every third of this).",
    )
    reload_every_s: float = Field(
        2.0, gt=0.0, description="How often API replicas look for a newer policy snapshot."
    )
    barp_snapshot: Path | None = Field(
        None,
        description="BaRP snapshot file (bandit-router train barp) to start BaRP from when the "
        "database holds no BaRP snapshot yet; None: BaRP starts from scratch.",
    )
    mlflow_enabled: bool = Field(
        True,
        description="Log the learner's and replay's metrics to MLflow (--no-mlflow turns it off).",
    )
    mlflow_uri: str = Field(
        default_factory=lambda: default_mlflow_uri(Path.cwd()),
        min_length=1,
        description="MLflow tracking URI; default: the SQLite store mlflow.db in the working "
        "directory (absolute path), e.g. http://mlflow:5000 for a tracking server.",
    )
    mlflow_log_every_s: float = Field(
        5.0,
        ge=0.0,
        description="The learner sends its metrics to MLflow after a commit at most this often "
        "(0: after every commit).",
    )
    ope_sample_every: int = Field(
        40,
        ge=1,
        description="The learner computes every policy's probabilities for the live off-policy "
        "estimates on one event in this many (1: every event; more: less learner overhead; at "
        "40 that work costs the learner about 3% of its throughput, at 20 about 5%).",
    )
    seed: int = Field(0, ge=0, description="Seed of the policies' random generators.")
    host: str = Field("127.0.0.1", min_length=1, description="Interface the API listens on.")
    port: int = Field(8000, ge=1, le=65535, description="TCP port the API listens on.")
    keep_prompts: bool = Field(
        False,
        description="Keep prompt text for debugging (off: only hashed features are stored).",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # No .env or secrets directory: one environment, one optional file, nothing implicit.
        return init_settings, env_settings, _toml_source(settings_cls)

    @field_validator("policies", mode="before")
    @classmethod
    def _split_policy_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [name.strip() for name in text.split(",") if name.strip()]
        return value

    @field_validator("policies")
    @classmethod
    def _known_policies(cls, names: list[str]) -> list[str]:
        if not names:
            raise ValueError(f"list at least one policy, from: {', '.join(POLICY_NAMES)}")
        unknown = [name for name in names if name not in POLICY_NAMES]
        if unknown:
            raise ValueError(
                f"unknown policy {', '.join(unknown)}; choose from {', '.join(POLICY_NAMES)}"
            )
        if len(set(names)) != len(names):
            raise ValueError(f"each policy may appear once, got {names}")
        return names

    @field_validator("database_url")
    @classmethod
    def _sqlalchemy_url(cls, url: str) -> str:
        try:
            make_url(url)
        except ArgumentError:
            raise ValueError(
                f"{url!r} is not a SQLAlchemy database URL; e.g. sqlite:///bandit-router.db or "
                "postgresql+psycopg://user@host:5432/db"
            ) from None
        return url

    @field_validator("kafka_bootstrap")
    @classmethod
    def _host_port_list(cls, servers: str) -> str:
        for server in servers.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"{server!r} is not host:port; e.g. 127.0.0.1:9092")
        return servers

    @model_validator(mode="after")
    def _decisions_outlive_the_horizon(self) -> Settings:
        if self.decision_ttl_s < self.join_horizon_s:
            raise ValueError(
                f"decision_ttl_s ({self.decision_ttl_s:g}) must be at least join_horizon_s "
                f"({self.join_horizon_s:g}): a decision must wait as long as its feedback may"
            )
        return self

    @model_validator(mode="after")
    def _serving_policy_learns(self) -> Settings:
        if self.serving_policy not in self.policies:
            raise ValueError(
                f"serving_policy {self.serving_policy!r} must be one of policies "
                f"{self.policies} (the served policy has to learn too)"
            )
        return self


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from ``overrides`` > environment > TOML file > defaults.

    The TOML file is ``config_file`` if given (the CLI's ``--config``), else the path in
    ``BANDIT_ROUTER_CONFIG``, else none. Raises `ConfigError` with one line per invalid field.
    """
    path = Path(config_file) if config_file is not None else None
    with _config_file_override(path):
        try:
            return Settings(**overrides)
        except ValidationError as error:
            raise ConfigError(_describe(error)) from None


@contextmanager
def _config_file_override(path: Path | None) -> Iterator[None]:
    token = _explicit_config_file.set(path)
    try:
        yield
    finally:
        _explicit_config_file.reset(token)


def _toml_source(settings_cls: type[BaseSettings]) -> TomlConfigSettingsSource:
    path = _explicit_config_file.get()
    origin = "--config"
    if path is None and os.environ.get(CONFIG_ENV):
        path, origin = Path(os.environ[CONFIG_ENV]), CONFIG_ENV
    if path is not None and not path.is_file():
        raise ConfigError(f"config file {path} (from {origin}) does not exist")
    try:
        return TomlConfigSettingsSource(settings_cls, toml_file=path)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None


def _describe(error: ValidationError) -> str:
    lines = []
    for problem in error.errors():
        message = problem["msg"].removeprefix("Value error, ")
        if not problem["loc"]:  # a rule across fields: its message names them
            lines.append(f"invalid settings: {message}")
            continue
        field = ".".join(str(part) for part in problem["loc"])
        if problem["type"] == "extra_forbidden":
            message = f"unknown setting; known: {', '.join(Settings.model_fields)}"
        elif field in Settings.model_fields:
            field = f"{field} (env {ENV_PREFIX}{field.upper()})"
        lines.append(f"invalid setting {field}: {message} (got {problem.get('input')!r})")
    return "\n".join(lines)
