"""run_stack: the foreground supervisor of web, worker, beat and flower."""

from __future__ import annotations

import os
import pty
import queue
import re
import shlex
import shutil
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

from shared.devstack import supervisor
from shared.settings import Settings, SettingsError

ROOT = Path(__file__).resolve().parents[3]
PYTHON = sys.executable

SLEEPER = "; ".join(
    [
        "import os, sys, time",
        "print('ready', os.getpid(), os.environ['TIMEBATCH_QUEUE'], flush=True)",
        "[open(path, 'w').close() for path in sys.argv[1:]]",
        "time.sleep(60)",
    ]
)
# SLEEPER and SPAWNER create the files named by their arguments once they have said "ready".
# Two grandchildren: one in the child's process group, one that leaves it (setsid).
SPAWNER = "; ".join(
    [
        "import subprocess, sys, time",
        "nap = [sys.executable, '-c', 'import time; time.sleep(60)']",
        "kept = subprocess.Popen(nap)",
        "escaped = subprocess.Popen(nap, start_new_session=True)",
        "print('ready', kept.pid, escaped.pid, flush=True)",
        "[open(path, 'w').close() for path in sys.argv[1:]]",
        "time.sleep(60)",
    ]
)
STUBBORN = "; ".join(
    [
        "import os, signal, time",
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)",
        "print('ready', os.getpid(), flush=True)",
        "time.sleep(60)",
    ]
)


def procfile(tmp_path: Path, processes: dict[str, list[str]]) -> Path:
    """A Procfile of these processes, for the stack to read as it reads the project's."""
    path = tmp_path / "Procfile"
    path.write_text("".join(f"{name}: {shlex.join(argv)}\n" for name, argv in processes.items()))
    return path


def after(tmp_path: Path, markers: list[Path], then: str) -> list[str]:
    """A process that runs `then` once every marker exists: it ends the stack only after the
    others have spoken. A file, as a Procfile line holds no loop."""
    script = tmp_path / f"after-{len(list(tmp_path.glob('after-*')))}.py"
    script.write_text(
        "import os, sys, time\n"
        "deadline = time.monotonic() + 30\n"
        f"while not all(map(os.path.exists, {[str(m) for m in markers]!r})):\n"
        "    assert time.monotonic() < deadline, 'the others never spoke'\n"
        "    time.sleep(0.02)\n"
        f"{then}\n"
    )
    return [PYTHON, str(script)]


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


def test_stack_commands_are_the_procfiles_with_the_settings(tmp_path: Path) -> None:
    base = settings(
        tmp_path,
        port=8123,
        web_concurrency=3,
        worker_concurrency=4,
        webhook_concurrency=5,
        flower_basic_auth="a:b,c:d",
    )
    commands = supervisor.stack_commands(base)
    assert list(commands) == ["web", "worker", "webhooks", "beat", "flower"]  # release before
    programs = {name: Path(argv[0]).name for name, argv in commands.items()}
    assert programs == {
        "web": "gunicorn",
        "worker": "celery",
        "webhooks": "celery",
        "beat": "celery",
        "flower": "env",
    }
    for argv in commands.values():
        if (Path(PYTHON).parent / Path(argv[0]).name).exists():
            assert argv[0] == str(Path(PYTHON).parent / Path(argv[0]).name)
    args = {name: shlex.join(argv[1:]) for name, argv in commands.items()}
    assert args == {
        "web": "--bind 0.0.0.0:8123 --workers 3 --worker-class gthread"
        " --timeout 120 --config python:api.gunicorn_config api.wsgi:app",
        "worker": "-A worker.main worker --loglevel INFO --concurrency 4"
        " --queues q-test,q-test.housekeeping",
        "webhooks": "-A worker.main worker --hostname webhooks@%h --loglevel INFO --pool threads"
        " --concurrency 5 --queues q-test.webhooks",
        "beat": "-A worker.main beat --loglevel INFO",
        "flower": "-u PROMETHEUS_MULTIPROC_DIR celery -A worker.main flower --address=0.0.0.0"
        " --port=5555 --basic-auth=a:b,c:d",
    }
    local = supervisor.stack_commands(supervisor.with_local_bind(base))
    assert local["web"][2] == "127.0.0.1:8123" and "--address=127.0.0.1" in local["flower"]


def test_the_procfile_needs_flower_basic_auth(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="flower needs FLOWER_BASIC_AUTH"):
        supervisor.stack_commands(settings(tmp_path))


def test_executables_come_from_the_venv_then_from_path() -> None:
    venv_bin = Path(PYTHON).parent
    assert supervisor.executable(Path(PYTHON).name) == PYTHON
    assert not (venv_bin / "sh").exists(), "the suite runs from a virtualenv"
    assert supervisor.executable("sh") == shutil.which("sh")
    assert supervisor.executable("/bin/sh") == "/bin/sh"  # a path is taken as it is
    # Left for Popen to fail on, with its own message (see the "ghost" test below).
    assert supervisor.executable("no-such-program-anywhere") == "no-such-program-anywhere"


# The Procfile and docker-compose.yml run the same commands: tests/shared/devstack/test_compose.py.


def test_the_stack_starts_with_an_empty_metrics_directory_flower_outside_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    show = "import os; print('dir', os.environ.get('PROMETHEUS_MULTIPROC_DIR'), flush=True)"
    # As the project's Procfile starts Flower: without the multiprocess directory.
    unset = ["env", "-u", "PROMETHEUS_MULTIPROC_DIR"]
    stack = procfile(
        tmp_path,
        {
            "worker": [PYTHON, "-c", show + "; import time; time.sleep(60)"],
            "flower": [*unset, PYTHON, "-c", show + "; import time; time.sleep(1.5)"],
        },
    )
    base = supervisor.with_metrics_dir(settings(tmp_path))
    assert base.metrics_dir is not None
    base.metrics_dir.mkdir(parents=True)
    (base.metrics_dir / "counter_12345.db").write_bytes(b"stale")
    assert supervisor.run_stack(base, stack) == 1  # flower quit on its own
    output = capsys.readouterr().out
    assert re.search(rf"^worker\s+\| dir {re.escape(str(base.metrics_dir))}$", output, re.M)
    assert re.search(r"^flower\s+\| dir None$", output, re.M), output
    assert list(base.metrics_dir.iterdir()) == []


def test_flower_never_runs_open(tmp_path: Path) -> None:
    embedded = supervisor.with_flower_auth(settings(tmp_path), embedded=True)
    user, _, password = (embedded.flower_basic_auth or "").partition(":")
    assert user == "admin" and len(password) >= 16
    assert supervisor.stack_commands(embedded)["flower"][-1] == f"--basic-auth=admin:{password}"
    given = settings(tmp_path, flower_basic_auth="ops:s3cret")
    assert supervisor.with_flower_auth(given, embedded=False) is given
    with pytest.raises(SettingsError, match="FLOWER_BASIC_AUTH"):
        supervisor.with_flower_auth(settings(tmp_path), embedded=False)


def test_timebatch_run_refuses_to_start_flower_open_in_production(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from shared.cli.commands import main

    env = {
        "DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/nothing",
        "BROKER_URL": "redis://127.0.0.1:1/0",
        "TIMEBATCH_DATA_DIR": str(tmp_path),
        "FLOWER_BASIC_AUTH": None,
    }
    result = CliRunner().invoke(main, ["run"], env=env)
    assert result.exit_code == 1
    assert "FLOWER_BASIC_AUTH is not set" in result.output


def test_metrics_directory_defaults_into_the_data_dir(tmp_path: Path) -> None:
    base = supervisor.with_metrics_dir(settings(tmp_path))
    assert base.metrics_dir == tmp_path / "data" / "metrics"
    chosen = settings(tmp_path, metrics_dir=tmp_path / "elsewhere")
    assert supervisor.with_metrics_dir(chosen).metrics_dir == tmp_path / "elsewhere"
    env = base.as_env()
    assert env["PROMETHEUS_MULTIPROC_DIR"] == str(tmp_path / "data" / "metrics")


# -------------------------------------------------------------------------------- running


RUNNER = """
import json, sys
from pathlib import Path
from shared.devstack import supervisor
from shared.settings import Settings
supervisor.STOP_TIMEOUT = float(sys.argv[2])
settings = Settings(
    database_url="postgresql+psycopg://nobody@/nothing",
    broker_url="redis://127.0.0.1:1/0",
    data_dir=Path(sys.argv[3]),
    queue="q-test",
)
sys.exit(supervisor.run_stack(settings, Path(sys.argv[1])))
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
        [PYTHON, "-c", RUNNER, str(procfile(tmp_path, processes)), "2", str(tmp_path / "data")],
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
    stack = procfile(
        tmp_path,
        {
            "sleeper": [PYTHON, "-c", SLEEPER, str(tmp_path / "sleeper-spoke")],
            "spawner": [PYTHON, "-c", SPAWNER, str(tmp_path / "spawner-spoke")],
            "quitter": after(
                tmp_path,
                [tmp_path / "sleeper-spoke", tmp_path / "spawner-spoke"],
                then="sys.exit(3)",
            ),
        },
    )
    handler = signal.getsignal(signal.SIGTERM)
    started = time.monotonic()
    assert supervisor.run_stack(settings(tmp_path), stack) == 3
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
    stack = procfile(
        tmp_path, {"sleeper": [PYTHON, "-c", SLEEPER], "victim": [PYTHON, "-c", suicide]}
    )
    assert supervisor.run_stack(settings(tmp_path), stack) == 128 + signal.SIGKILL


def test_a_signal_without_a_name_is_reported_by_number(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    number = signal.SIGRTMIN + 6  # real-time signals have no name of their own
    suicide = f"import os, time; time.sleep(0.5); os.kill(os.getpid(), {number})"
    stack = procfile(tmp_path, {"victim": [PYTHON, "-c", suicide]})
    assert supervisor.run_stack(settings(tmp_path), stack) == 128 + number
    assert f"victim exited on its own (signal {number})" in capsys.readouterr().out


def test_output_to_a_terminal_is_coloured_by_process(tmp_path: Path) -> None:
    spoke = tmp_path / "second-spoke"
    processes = {
        "first": after(tmp_path, [spoke], then="print('one')"),
        "second": [PYTHON, "-c", SLEEPER, str(spoke)],
    }
    controller, terminal = pty.openpty()
    runner = subprocess.Popen(
        [PYTHON, "-c", RUNNER, str(procfile(tmp_path, processes)), "2", str(tmp_path / "data")],
        cwd=ROOT,
        stdout=terminal,
        stderr=subprocess.STDOUT,
    )
    os.close(terminal)
    chunks = []
    try:
        with suppress(OSError):  # EIO once the runner and its children closed the terminal
            while chunk := os.read(controller, 65536):
                chunks.append(chunk)
        assert runner.wait(timeout=30) == 1  # first exited on its own
    finally:
        os.close(controller)
        if runner.poll() is None:
            runner.kill()
            runner.wait()
    output = b"".join(chunks).decode()
    assert "\x1b[36mfirst  |\x1b[0m one\r\n" in output, output
    assert re.search(r"\x1b\[33msecond \|\x1b\[0m ready \d+ q-test\r\n", output), output
    assert "\x1b[32msystem |\x1b[0m first exited on its own (exit code 0)" in output, output


def test_an_executable_that_cannot_start_stops_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = procfile(
        tmp_path, {"sleeper": [PYTHON, "-c", SLEEPER], "ghost": [str(tmp_path / "no-such-program")]}
    )
    assert supervisor.run_stack(settings(tmp_path), stack) == 127
    output = capsys.readouterr().out
    assert "cannot start ghost" in output
    assert "sleeper stopped" in output
