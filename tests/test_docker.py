"""docker/: the compose file is valid and wires the distributed setup (Kafka bus, Postgres, MLflow)
the way the CLI and the settings expect; the image runs `bandit-router` as a non-root user.

Nothing here pulls or builds an image: the files are read, and `docker compose config` validates
the compose file where a compose CLI is installed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from bandit_router.cli import build_parser
from bandit_router.config import ENV_PREFIX, Settings

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker" / "compose.yml"
DOCKERFILE = REPO / "docker" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

POSTGRES_URL = "postgresql+psycopg://router:router@postgres:5432/router"
KAFKA_BUS = "kafka://kafka:9092"
ROUTER_IMAGE = "bandit-router:local"


def _compose_cli() -> list[str] | None:
    """`docker compose` (the v2 plugin) if it answers, else `docker-compose`, else None."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def _option(command: list[str], flag: str) -> str:
    """The value after ``flag`` in an argv list."""
    assert flag in command, f"{flag} missing from {command}"
    return command[command.index(flag) + 1]


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", "", DOCKERFILE.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, arguments = line.partition(" ")
            pairs.append((keyword.upper(), arguments.strip()))
    return pairs


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps ``path`` (or a folder above it) out of the build context."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    globs = []
    for pattern in patterns:
        if pattern.startswith("**/"):
            globs += [pattern[3:], "*/" + pattern[3:]]
        else:
            globs.append(pattern)
    return any(fnmatchcase(prefix, glob) for prefix in prefixes for glob in globs)


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_docker_compose_config_accepts_the_file() -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no compose CLI: neither `docker compose` nor `docker-compose` is installed")
    result = subprocess.run(
        [*cli, "-f", str(COMPOSE), "config", "-q"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_compose_has_the_distributed_services(services: dict[str, Any]) -> None:
    assert {"kafka", "postgres", "mlflow", "migrate", "api", "learner"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["postgres"]["image"] == "postgres:15"
    assert services["mlflow"]["image"].startswith("ghcr.io/mlflow/mlflow:")
    assert services["api"]["deploy"]["replicas"] == 2
    for name in ("migrate", "api", "learner"):
        assert services[name]["image"] == ROUTER_IMAGE
        assert services[name]["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}


def test_router_commands_use_the_kafka_bus_and_postgres(services: dict[str, Any]) -> None:
    migrate, api, learner = (services[name]["command"] for name in ("migrate", "api", "learner"))
    assert migrate[:2] == ["db", "upgrade"]
    assert api[0] == "serve" and "--no-learner" in api
    assert _option(api, "--host") == "0.0.0.0"
    assert learner[0] == "learn" and "--no-learner" not in learner
    for command in (migrate, api, learner):
        assert _option(command, "--database") == POSTGRES_URL
    for command in (api, learner):
        assert _option(command, "--bus") == KAFKA_BUS


def test_urls_point_at_the_services_that_answer_them(services: dict[str, Any]) -> None:
    url = make_url(POSTGRES_URL)
    postgres = services["postgres"]["environment"]
    assert (url.host, url.port) == ("postgres", 5432)
    assert (url.username, url.password, url.database) == (
        postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"], postgres["POSTGRES_DB"],
    )
    kafka = services["kafka"]["environment"]
    assert KAFKA_BUS.replace("kafka://", "PLAINTEXT://") in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert "PLAINTEXT://:9092" in kafka["KAFKA_LISTENERS"].split(",")
    mlflow = services["mlflow"]
    assert "--port=5000" in mlflow["command"]
    # MLflow 3 answers 403 to a Host header it does not list; the router sends "mlflow:5000".
    assert "mlflow:5000" in mlflow["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    published = services["api"]["ports"][0]
    assert published.endswith(":" + _option(services["api"]["command"], "--port"))


def test_router_environment_names_real_settings(services: dict[str, Any]) -> None:
    for name in ("api", "learner"):
        environment = services[name]["environment"]
        assert environment[f"{ENV_PREFIX}MLFLOW_URI"] == "http://mlflow:5000"
        for key in environment:
            assert key.startswith(ENV_PREFIX), key
            assert key.removeprefix(ENV_PREFIX).lower() in Settings.model_fields, key


def test_dependencies_wait_on_conditions_that_can_be_met(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for target, rule in service.get("depends_on", {}).items():
            if rule["condition"] == "service_healthy":
                check = services[target].get("healthcheck", {})
                assert check.get("test") and not check.get("disable"), f"{name} waits on {target}"
            else:
                assert rule["condition"] == "service_completed_successfully"
                assert services[target]["restart"] == "no", f"{name} waits on {target} to exit"
    # The image's health probe is an HTTP GET of /healthz: only `serve` answers it.
    for name in ("migrate", "learner"):
        assert services[name]["healthcheck"] == {"disable": True}
    assert "healthcheck" not in services["api"]


@pytest.mark.parametrize(
    "name",
    ["migrate", "api", "learner"],
)
def test_service_commands_parse_with_the_cli(services: dict[str, Any], name: str) -> None:
    build_parser().parse_args(services[name]["command"])


def test_dockerfile_runs_bandit_router_as_a_non_root_user() -> None:
    instructions = _dockerfile_instructions()
    last = {keyword: arguments for keyword, arguments in instructions}
    assert instructions[0] == ("FROM", "python:3.12-slim")
    assert json.loads(last["ENTRYPOINT"]) == ["bandit-router"]
    command = json.loads(last["CMD"])
    assert command == ["serve", "--host", "0.0.0.0", "--port", "8000"]
    build_parser().parse_args(command)
    assert last["USER"] not in {"root", "0"}
    probe = re.search(r"http://127\.0\.0\.1:(\d+)/healthz", last["HEALTHCHECK"])
    assert probe and probe.group(1) == _option(command, "--port")
    runs = [arguments for keyword, arguments in instructions if keyword == "RUN"]
    assert not any("[dev]" in run or "curl" in run for run in runs)


def test_image_gets_every_tracked_file_it_copies() -> None:
    sources = [
        source
        for keyword, arguments in _dockerfile_instructions()
        if keyword == "COPY"
        for source in arguments.split()[:-1]
    ]
    # bandit_router.storage looks for the Alembic scripts beside the packages.
    assert {"pyproject.toml", "policies", "streams", "bandit_router", "migrations"} <= set(sources)
    patterns = [
        line.strip() for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    tracked = subprocess.run(
        ["git", "ls-files", "--", *sources], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    assert any(path.startswith("migrations/versions/") for path in tracked)
    assert [path for path in tracked if _dockerignored(path, patterns)] == []
    assert _dockerignored("bandit_router/__pycache__/api.cpython-312.pyc", patterns)
    assert _dockerignored("bandit-router.db", patterns)
