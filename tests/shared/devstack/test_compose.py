"""The Procfile, the one list of the processes `timebatch run` starts, and docker-compose.yml,
which spells the same commands, both production-ready.

The compose file's commands are compared with the Procfile's expanded with the compose
file's variables; it is read with a YAML parser, anchors and merge keys included.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from expandvars import expand
from honcho.environ import parse_procfile

from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
LONG_RUNNING = ("web", "worker", "webhooks", "beat", "flower")
# ${VAR:?message}: the shell (or compose) refuses to start when VAR is unset.
REQUIRED = re.compile(r"\$\{(\w+):\?[^}]*\}")
DEFAULTED = re.compile(r"^\$\{(\w+):-([^}]*)\}$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


@pytest.fixture(scope="module")
def procfile() -> dict[str, str]:
    return dict(parse_procfile((ROOT / "Procfile").read_text()).processes)


def defaults(tmp_path: Path) -> Settings:
    return Settings(None, None, tmp_path)


# -------------------------------------------------------------------------------- Procfile


# ${VAR:-default} with no variable inside the default: the innermost of nested ones.
INNER_DEFAULT = re.compile(r"\$\{(\w+):-([^${}]*)\}")


def test_every_procfile_variable_has_the_settings_default(
    procfile: dict[str, str], tmp_path: Path
) -> None:
    assert procfile["release"] == "timebatch db upgrade"
    assert set(procfile) == {"release", *LONG_RUNNING}
    text = " ".join(procfile.values())
    assert not re.search(r"\$\w", text), "a variable without a default"
    urls = ("postgresql+psycopg://x@y/z", "redis://r:6379/0")
    settings_env = defaults(tmp_path).with_urls(*urls).as_env()
    found = INNER_DEFAULT.findall(text)
    # TIMEBATCH_BIND is unset by default: the Procfile binds every interface, as a
    # platform needs; `timebatch run` binds 127.0.0.1 (shared/devstack/supervisor.py).
    assert ("TIMEBATCH_BIND", "0.0.0.0") in found
    for name, default in found:
        if name != "TIMEBATCH_BIND":
            assert settings_env[name] == default, name
    assert "${PORT:-${TIMEBATCH_PORT:-" in procfile["web"]  # the platform's port first


def test_the_procfile_runs_with_only_what_a_platform_must_set(procfile: dict[str, str]) -> None:
    env = {"DATABASE_URL": "x", "BROKER_URL": "y", "FLOWER_BASIC_AUTH": "a:b", "PORT": "5000"}
    words = {name: shlex.split(expand(command, environ=env)) for name, command in procfile.items()}
    assert words["web"][1:5] == ["--bind", "0.0.0.0:5000", "--workers", "2"]
    assert (
        "--concurrency" in words["worker"] and "timebatch,timebatch.housekeeping" in words["worker"]
    )
    assert words["flower"][-3:] == ["--address=0.0.0.0", "--port=5555", "--basic-auth=a:b"]


def test_procfile_flower_refuses_to_start_without_basic_auth(procfile: dict[str, str]) -> None:
    assert REQUIRED.findall(procfile["flower"]) == ["FLOWER_BASIC_AUTH"]


# ---------------------------------------------------------------------- docker-compose.yml


def test_compose_runs_the_procfiles_commands(
    compose: dict[str, Any], procfile: dict[str, str]
) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "migrate", *LONG_RUNNING}
    assert services["migrate"]["command"] == shlex.split(procfile["release"])
    environment = compose["x-app"]["environment"]
    assert environment["TIMEBATCH_PORT"] == "8000" and environment["FLOWER_PORT"] == "5555"
    assert environment["TIMEBATCH_DATA_DIR"] == "/data"
    for name in LONG_RUNNING:
        # Compose's own ${...} stay as they are, for compose to fill in; their spaces are
        # inside one word.
        env = {**environment, **services[name]["environment"]}
        space = "\N{NO-BREAK SPACE}"
        kept = {key: str(value).replace(" ", space) for key, value in env.items()}
        expanded = shlex.split(expand(procfile[name], environ=kept))
        words = [word.replace(space, " ") for word in expanded]
        # Compose's Flower has no PROMETHEUS_MULTIPROC_DIR to unset.
        if words[:3] == ["env", "-u", "PROMETHEUS_MULTIPROC_DIR"]:
            words = words[3:]
        assert [str(word) for word in services[name]["command"]] == words, name


def test_compose_passes_every_setting_with_the_same_defaults(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    environment = compose["x-app"]["environment"]
    base = defaults(tmp_path).with_urls("postgresql+psycopg://x@y/z", "redis://r:6379/0")
    for key, default in base.as_env().items():
        assert key in environment, f"{key} is not passed to the containers"
        if match := DEFAULTED.match(str(environment[key])):
            assert match.group(1) == key
            assert match.group(2) == default, key
    assert environment["TIMEBATCH_DEMO"] == "0"
    # Every container gets the same settings (the merge keys did their job).
    for name in ("migrate", *LONG_RUNNING):
        assert environment.items() <= compose["services"][name]["environment"].items(), name


def test_compose_servers_keep_their_data_and_report_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("postgres", "redis"):
        assert services[name]["healthcheck"]["test"], name
        (volume,) = services[name]["volumes"]
        assert volume.split(":")[0] in compose["volumes"], name
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith(
        "${POSTGRES_PASSWORD:?"
    )


def test_compose_migrates_once_before_anything_else_starts(compose: dict[str, Any]) -> None:
    services = compose["services"]
    migrate = services["migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in LONG_RUNNING:
        depends = services[name]["depends_on"]
        assert depends["migrate"] == {"condition": "service_completed_successfully"}, name
        assert depends["redis"] == {"condition": "service_healthy"}, name
        assert services[name]["restart"] == "unless-stopped", name


def test_compose_runs_exactly_one_beat_and_a_protected_flower(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["beat"]["deploy"]["replicas"] == 1
    assert "deploy" not in services["worker"]  # workers scale: --scale worker=N
    flower = services["flower"]
    assert (
        flower["environment"]["FLOWER_BASIC_AUTH"] == "${FLOWER_BASIC_AUTH:?set FLOWER_BASIC_AUTH}"
    )
    assert flower["command"][-1] == "--basic-auth=${FLOWER_BASIC_AUTH:?set FLOWER_BASIC_AUTH}"


def test_compose_web_and_worker_share_an_in_memory_metrics_directory(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    mounts = set()
    for name in ("web", "worker", "webhooks"):
        directory = services[name]["environment"]["PROMETHEUS_MULTIPROC_DIR"]
        (volume,) = [v for v in services[name]["volumes"] if v.endswith(f":{directory}")]
        mounts.add(volume)
    (shared,) = mounts
    volume = compose["volumes"][shared.split(":")[0]]
    assert volume["driver_opts"]["type"] == "tmpfs"
    for name in set(LONG_RUNNING) - {"web", "worker", "webhooks"}:
        assert "PROMETHEUS_MULTIPROC_DIR" not in services[name]["environment"], name
    procfile = parse_procfile((ROOT / "Procfile").read_text()).processes
    assert procfile["flower"].startswith("env -u PROMETHEUS_MULTIPROC_DIR ")


def test_compose_checks_web_and_worker_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "/healthz" in " ".join(services["web"]["healthcheck"]["test"])
    assert "inspect ping" in " ".join(services["worker"]["healthcheck"]["test"])
