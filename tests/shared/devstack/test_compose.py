"""docker-compose.yml and the Procfile run the processes of `timebatch run`, production-ready.

The commands are compared with shared/devstack/supervisor.py PROCESSES rendered with the variables
each file uses; the compose file is read with a YAML parser, anchors and merge keys included.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.devstack import supervisor
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
LONG_RUNNING = ("web", "worker", "beat", "flower")
# ${VAR:?message}: the shell (or compose) refuses to start when VAR is unset.
REQUIRED = re.compile(r"\$\{(\w+):\?[^}]*\}")
DEFAULTED = re.compile(r"^\$\{(\w+):-([^}]*)\}$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


@pytest.fixture(scope="module")
def procfile() -> dict[str, str]:
    lines: dict[str, str] = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9_]+):\s*(.+)$", line):
            lines[match.group(1)] = match.group(2)
    return lines


def defaults(tmp_path: Path) -> Settings:
    return Settings(None, None, tmp_path)


# -------------------------------------------------------------------------------- Procfile


def test_procfile_runs_the_same_commands(procfile: dict[str, str]) -> None:
    assert procfile.pop("release") == "timebatch db upgrade"
    assert set(procfile) == set(supervisor.PROCESSES)
    as_env = {name: f"${env}" for name, env in supervisor.SETTINGS_ENV.items()}
    for name, template in supervisor.PROCESSES.items():
        words = shlex.split(REQUIRED.sub(r"$\1", procfile[name]))
        # What `timebatch run` leaves out of a process's environment, the Procfile unsets.
        unset = supervisor.UNSET_ENV.get(name, ())
        if unset:
            assert words[:1] == ["env"]
            assert words[1 : 1 + 2 * len(unset)] == [w for v in unset for w in ("-u", v)]
            words = words[1 + 2 * len(unset) :]
        assert words == supervisor.render(template, as_env), name


def test_procfile_flower_refuses_to_start_without_basic_auth(procfile: dict[str, str]) -> None:
    assert REQUIRED.findall(procfile["flower"]) == ["FLOWER_BASIC_AUTH"]


# ---------------------------------------------------------------------- docker-compose.yml


def test_compose_runs_the_same_commands(compose: dict[str, Any], tmp_path: Path) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "migrate", *LONG_RUNNING}
    environment = compose["x-app"]["environment"]
    values: dict[str, object] = {
        "port": 8000,
        "flower_port": 5555,
        "data_dir": "/data",
        "flower_basic_auth": "${FLOWER_BASIC_AUTH:?set FLOWER_BASIC_AUTH}",
    }
    for name in ("web_concurrency", "worker_concurrency", "queue"):
        env = supervisor.SETTINGS_ENV[name]
        values[name] = environment[env]  # e.g. ${WORKER_CONCURRENCY:-2}
        assert values[name] == f"${{{env}:-{getattr(defaults(tmp_path), name)}}}"
    for name, template in supervisor.PROCESSES.items():
        assert [str(word) for word in services[name]["command"]] == supervisor.render(
            template, values
        ), name
    assert environment["TIMEBATCH_PORT"] == "8000" and environment["FLOWER_PORT"] == "5555"
    assert environment["TIMEBATCH_DATA_DIR"] == "/data"
    assert services["migrate"]["command"] == ["timebatch", "db", "upgrade"]


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
    for name in ("web", "worker"):
        directory = services[name]["environment"]["PROMETHEUS_MULTIPROC_DIR"]
        (volume,) = [v for v in services[name]["volumes"] if v.endswith(f":{directory}")]
        mounts.add(volume)
    (shared,) = mounts
    volume = compose["volumes"][shared.split(":")[0]]
    assert volume["driver_opts"]["type"] == "tmpfs"
    for name in set(LONG_RUNNING) - {"web", "worker"}:
        assert "PROMETHEUS_MULTIPROC_DIR" not in services[name]["environment"], name
    assert set(supervisor.UNSET_ENV["flower"]) == {"PROMETHEUS_MULTIPROC_DIR"}


def test_compose_checks_web_and_worker_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "/healthz" in " ".join(services["web"]["healthcheck"]["test"])
    assert "inspect ping" in " ".join(services["worker"]["healthcheck"]["test"])
