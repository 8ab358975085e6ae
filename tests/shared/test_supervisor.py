"""run_stack: the foreground supervisor of web, worker, beat and flower."""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from contextlib import suppress
from pathlib import Path
from typing import IO, Any

import psutil
import pytest

from shared import supervisor
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable

SLEEPER = (
    "import os, time\n"
    "print('ready', os.getpid(), os.environ['TIMEBATCH_QUEUE'], flush=True)\n"
    "time.sleep(60)\n"
)
# Two grandchildren: one in the child's process group, one that leaves it (setsid).
SPAWNER = (
    "import subprocess, sys, time\n"
    "nap = [sys.executable, '-c', 'import time; time.sleep(60)']\n"
    "kept = subprocess.Popen(nap)\n"
    "escaped = subprocess.Popen(nap, start_new_session=True)\n"
    "print('ready', kept.pid, escaped.pid, flush=True)\n"
    "time.sleep(60)\n"
)
STUBBORN = (
    "import os, signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', os.getpid(), flush=True)\n"
    "time.sleep(60)\n"
)


def settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": "postgresql+psycopg://nobody@/nothing",
        "broker_url": "redis://127.0.0.1:1/0",
        "data_dir": tmp_path / "data",
        "queue": "q-test",
    }
    return Settings(**(values | overrides))


def alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def wait_dead(pids: list[int], timeout: float = 3.0) -> list[int]:
    """The pids still alive after timeout (orphans may need a moment to be reaped)."""
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [pid for pid in pids if alive(pid)]


def ready_pids(lines: list[str]) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for line in lines:
        match = re.match(r"^(\w+)\s+\| ready((?: \d+)+)", line)
        if match:
            found[match.group(1)] = [int(pid) for pid in match.group(2).split()]
    return found


# ------------------------------------------------------------------------------- commands


def test_stack_commands_follow_settings(tmp_path: Path) -> None:
    base = settings(tmp_path, port=8123, web_concurrency=3, worker_concurrency=4)
    commands = supervisor.stack_commands(base)
    assert list(commands) == ["web", "worker", "beat", "flower"]
    for argv in commands.values():
        assert Path(argv[0]).name in {"gunicorn", "celery"}
        if (Path(PYTHON).parent / Path(argv[0]).name).exists():
            assert argv[0] == str(Path(PYTHON).parent / Path(argv[0]).name)
    args = {name: shlex.join(argv[1:]) for name, argv in commands.items()}
    assert args == {
        "web": "--bind 0.0.0.0:8123 --workers 3 --worker-class gthread --threads 8"
        " --timeout 120 api.wsgi:app",
        "worker": "-A worker.main worker --loglevel INFO --concurrency 4 --queues q-test",
        "beat": "-A worker.main beat --loglevel INFO"
        f" --schedule {base.data_dir}/celerybeat-schedule",
        "flower": "-A worker.main flower --port=5555",
    }
    with_auth = supervisor.stack_commands(settings(tmp_path, flower_basic_auth="a:b,c:d"))
    assert with_auth["flower"][-1] == "--basic-auth=a:b,c:d"


def test_procfile_runs_the_same_commands() -> None:
    lines: dict[str, str] = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9_]+):\s*(.+)$", line):
            lines[match.group(1)] = match.group(2)
    assert lines.pop("release") == "timebatch db upgrade"
    assert set(lines) == set(supervisor.PROCESSES)
    as_env = {name: f"${env}" for name, env in supervisor.SETTINGS_ENV.items()}
    for name, template in supervisor.PROCESSES.items():
        words = []
        for word in shlex.split(lines[name]):
            # ${VAR:+arg}: arg only when VAR is set, as render() drops arguments of None.
            optional = re.fullmatch(r"\$\{(\w+):\+(.+)\}", word)
            if optional:
                assert f"${optional.group(1)}" in optional.group(2)
                word = optional.group(2)
            words.append(word)
        assert words == supervisor.render(template, as_env), name


def compose_commands(text: str) -> dict[str, list[str]]:
    """`command:` block lists of the services (no YAML parser in the venv)."""
    commands: dict[str, list[str]] = {}
    service = None
    in_command = False
    for line in text.splitlines():
        if match := re.fullmatch(r"  ([a-z]+):", line):
            service, in_command = match.group(1), False
        elif line == "    command:":
            in_command = True
            assert service is not None
            commands[service] = []
        elif in_command and (match := re.fullmatch(r"      - (.+)", line)):
            assert service is not None
            commands[service].append(match.group(1).strip('"'))
        else:
            in_command = False
    return commands


def test_docker_compose_runs_the_same_commands(tmp_path: Path) -> None:
    compose = (ROOT / "docker-compose.yml").read_text()
    commands = compose_commands(compose)
    defaults = settings(tmp_path)
    values: dict[str, object] = {
        "port": 8000,
        "flower_port": 5555,
        "data_dir": "/data",
        "flower_basic_auth": "${FLOWER_BASIC_AUTH:?set FLOWER_BASIC_AUTH}",
    }
    for name in ("web_concurrency", "worker_concurrency", "queue"):
        env = supervisor.SETTINGS_ENV[name]
        default = getattr(Settings(None, None, tmp_path), name)
        values[name] = f"${{{env}:-{default}}}"
        assert f"{env}: {values[name]}" in compose  # the containers' Settings agree
    for name, template in supervisor.PROCESSES.items():
        assert commands[name] == supervisor.render(template, values), name
    assert 'command: ["timebatch", "db", "upgrade"]' in compose
    assert defaults.port == 8000 and defaults.flower_port == 5555


# -------------------------------------------------------------------------------- running


RUNNER = """
import json, sys
from pathlib import Path
from shared import supervisor
from shared.settings import Settings
supervisor.PROCESSES = json.loads(sys.argv[1])
supervisor.STOP_TIMEOUT = float(sys.argv[2])
settings = Settings(
    database_url="postgresql+psycopg://nobody@/nothing",
    broker_url="redis://127.0.0.1:1/0",
    data_dir=Path(sys.argv[3]),
    queue="q-test",
)
sys.exit(supervisor.run_stack(settings))
"""


def read_lines(stream: IO[str], into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line.rstrip("\n"))


def test_sigterm_leaves_no_child_or_grandchild(tmp_path: Path) -> None:
    processes = {
        "sleeper": [PYTHON, "-c", SLEEPER],
        "spawner": [PYTHON, "-c", SPAWNER],
        "stubborn": [PYTHON, "-c", STUBBORN],
    }
    runner = subprocess.Popen(
        [PYTHON, "-c", RUNNER, json.dumps(processes), "2", str(tmp_path / "data")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert runner.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=read_lines, args=(runner.stdout, lines), daemon=True).start()
    seen: list[str] = []
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 10
        while len(ready_pids(seen)) < len(processes) and time.monotonic() < deadline:
            with suppress(queue.Empty):
                seen.append(lines.get(timeout=0.2))
        found = ready_pids(seen)
        assert set(found) == set(processes), seen
        pids = [pid for group in found.values() for pid in group]
        assert len(pids) == 4 and all(alive(pid) for pid in pids)
        assert any(re.match(r"^sleeper\s+\| ready \d+ q-test$", line) for line in seen), seen

        started = time.monotonic()
        runner.send_signal(signal.SIGTERM)
        assert runner.wait(timeout=15) == 0
        assert time.monotonic() - started < 10
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
        runner.stdout.close()
        for pid in pids:  # never leak sleepers, even when the test fails
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert wait_dead(pids) == []


def test_a_child_exiting_on_its_own_stops_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        supervisor,
        "PROCESSES",
        {
            "sleeper": [PYTHON, "-c", SLEEPER],
            "spawner": [PYTHON, "-c", SPAWNER],
            "quitter": [PYTHON, "-c", "import sys, time; time.sleep(1.5); sys.exit(3)"],
        },
    )
    handler = signal.getsignal(signal.SIGTERM)
    started = time.monotonic()
    assert supervisor.run_stack(settings(tmp_path)) == 3
    assert time.monotonic() - started < 10
    assert signal.getsignal(signal.SIGTERM) is handler
    output = capsys.readouterr().out.splitlines()
    found = ready_pids(output)
    assert set(found) == {"sleeper", "spawner"}, output
    assert wait_dead([pid for group in found.values() for pid in group]) == []
    assert any("quitter exited on its own (exit code 3)" in line for line in output), output
    assert (tmp_path / "data").is_dir()


def test_a_child_killed_by_a_signal_gives_128_plus_its_number(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    suicide = "import os, signal, time; time.sleep(0.5); os.kill(os.getpid(), signal.SIGKILL)"
    monkeypatch.setattr(
        supervisor,
        "PROCESSES",
        {"sleeper": [PYTHON, "-c", SLEEPER], "victim": [PYTHON, "-c", suicide]},
    )
    assert supervisor.run_stack(settings(tmp_path)) == 128 + signal.SIGKILL


def test_an_executable_that_cannot_start_stops_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        supervisor,
        "PROCESSES",
        {"sleeper": [PYTHON, "-c", SLEEPER], "ghost": [str(tmp_path / "no-such-program")]},
    )
    assert supervisor.run_stack(settings(tmp_path)) == 127
    output = capsys.readouterr().out
    assert "cannot start ghost" in output
    assert "sleeper stopped" in output
