"""Run the timebatch stack (web, worker, beat, flower) in the foreground, like honcho.

The commands are the Procfile's, the one list of them: :func:`stack_commands` reads it and
expands its variables (``${WEB_CONCURRENCY:-2}``) with the settings' environment, as the
shell of honcho or of a platform would; docker-compose.yml spells the same commands.

Each process runs in its own process group with the environment its command was expanded
with, and its output is copied line by line with the process name in front. On SIGINT,
SIGTERM or SIGHUP, or as soon as any process exits on its own, every process group gets
SIGTERM; whatever is left after :data:`STOP_TIMEOUT` seconds gets SIGKILL. :func:`run_stack`
returns only when no process of the stack is left, grandchildren included (celery's prefork
pool, gunicorn's workers). A second signal while stopping skips the grace period.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Collection
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

import psutil
from expandvars import expand
from honcho.environ import parse_procfile

from shared.ops.metrics import prepare_directory
from shared.settings import Settings, SettingsError

# In a checkout (make run) the Procfile lies beside the packages; an installed package (the
# image) finds it in the working directory.
CHECKOUT_PROCFILE = Path(__file__).resolve().parents[2] / "Procfile"
# Run once before the others (the migration), not beside them.
RELEASE = "release"

STOP_TIMEOUT = 15.0
KILL_TIMEOUT = 5.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_POLL = 0.1
_SNAPSHOT_EVERY = 1.0
_COLOURS = (36, 33, 32, 35, 34, 31)


def stack_env(settings: Settings) -> dict[str, str]:
    """The environment of the stack's processes: the settings', the web on their port."""
    # The Procfile's web binds $PORT first, as platforms set it: here the settings decide.
    return settings.child_env() | {"PORT": str(settings.port)}


def find_procfile() -> Path:
    if CHECKOUT_PROCFILE.is_file():
        return CHECKOUT_PROCFILE
    here = Path.cwd() / "Procfile"
    if here.is_file():
        return here
    raise SettingsError(
        f"no Procfile beside the packages ({CHECKOUT_PROCFILE}) nor in {here.parent}"
    )


def stack_commands(
    settings: Settings, procfile: Path | None = None, names: Collection[str] | None = None
) -> dict[str, list[str]]:
    """The argv of the long-running processes of the Procfile (those `names`, or all), its
    variables expanded with :func:`stack_env`, executables resolved (see :func:`executable`)."""
    env = stack_env(settings)
    commands: dict[str, list[str]] = {}
    text = (procfile or find_procfile()).read_text()
    for name, command in parse_procfile(text).processes.items():
        if name == RELEASE or (names is not None and name not in names):
            continue
        try:
            argv = shlex.split(expand(command, environ=env))
        except KeyError as exc:  # ${VAR:?message} with VAR unset
            raise SettingsError(f"the Procfile's {name} needs {exc.args[0]}") from exc
        commands[name] = [executable(argv[0]), *argv[1:]]
    return commands


def executable(program: str) -> str:
    """program from the directory of sys.executable (the venv's bin), else from PATH.

    So .venv/bin/timebatch works without an activated venv.
    """
    if os.sep in program:
        return program
    candidate = Path(sys.executable).parent / program
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which(program) or program


def with_flower_auth(settings: Settings, *, embedded: bool) -> Settings:
    """Flower never runs open: the embedded default makes up a password, production needs one."""
    if settings.flower_basic_auth is not None:
        return settings
    if not embedded:
        raise SettingsError(
            "FLOWER_BASIC_AUTH is not set: Flower refuses to start without basic auth"
            " (user:password) outside the embedded default"
        )
    password = secrets.token_urlsafe(12)
    return dataclasses.replace(settings, flower_basic_auth=f"admin:{password}")


def with_local_bind(settings: Settings) -> Settings:
    """`timebatch run` serves this machine only unless TIMEBATCH_BIND says otherwise; the
    Procfile and compose bind every interface, as a platform or a container needs."""
    if settings.bind is not None:
        return settings
    return dataclasses.replace(settings, bind="127.0.0.1")


def with_metrics_dir(settings: Settings) -> Settings:
    """PROMETHEUS_MULTIPROC_DIR, <data_dir>/metrics unless set: web and worker share it."""
    if settings.metrics_dir is not None:
        return settings
    return dataclasses.replace(settings, metrics_dir=settings.data_dir / "metrics")


def run_stack(settings: Settings, procfile: Path | None = None) -> int:
    """Run the stack in the foreground until a signal arrives or a process exits.

    Returns 0 after a stop by signal, else the exit status of the process that exited on
    its own (1 if that was 0; 128+N for a death by signal N), or 127 if a process could
    not be started. Must be called from the main thread (it installs signal handlers).
    Settings must carry both URLs (see shared.devstack.embedded.embedded_settings).
    """
    env = stack_env(settings)
    env.setdefault("PYTHONUNBUFFERED", "1")  # lines through our pipes as they are printed
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.metrics_dir is not None:
        # Counters start from zero with the stack; files of an earlier run would be summed.
        prepare_directory(settings.metrics_dir, clear=True)
    return _Stack(stack_commands(settings, procfile), env).run()


@dataclass
class _Child:
    name: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    reader: threading.Thread
    returncode: int | None = None


@dataclass
class _Stack:
    commands: dict[str, list[str]]
    env: dict[str, str]
    children: list[_Child] = field(default_factory=list)
    descendants: dict[int, Any] = field(default_factory=dict)  # pid -> psutil.Process
    signals: int = 0
    failure: int | None = None
    _output_lock: threading.Lock = field(default_factory=threading.Lock)
    _width: int = 0
    _colour: bool = False

    def run(self) -> int:
        self._width = max([len(name) for name in self.commands] + [len("system")])
        self._colour = _isatty(sys.stdout)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        try:
            try:
                self._start_all()
                self._supervise()
            finally:
                self._shutdown()  # whatever happened, leave no process behind
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self.failure if self.failure is not None else 0

    # ------------------------------------------------------------------------- running

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only set flags here: the main loop notices within _POLL seconds.
        self.signals += 1

    def _start_all(self) -> None:
        for index, (name, argv) in enumerate(self.commands.items()):
            if self.signals:
                return
            try:
                popen = subprocess.Popen(
                    argv,
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    process_group=0,  # its own group: the whole tree can be signalled
                    close_fds=True,
                )
            except OSError as exc:
                self._say(f"cannot start {name}: {exc}")
                self.failure = 127
                return
            assert popen.stdout is not None
            reader = threading.Thread(
                target=self._copy_output,
                args=(name, index, popen.stdout),
                name=f"output-{name}",
                daemon=True,
            )
            reader.start()
            self.children.append(_Child(name, argv, popen, reader))
            self._say(f"{name} started (pid {popen.pid}): {_display(argv)}")

    def _supervise(self) -> None:
        next_snapshot = 0.0
        while not self.signals and self.failure is None:
            for child in self.children:
                if self._reap(child) is not None:
                    self._say(f"{child.name} exited on its own ({_describe(child.returncode)})")
                    self.failure = _exit_status(child.returncode)
                    return
            if time.monotonic() >= next_snapshot:
                self._snapshot()
                next_snapshot = time.monotonic() + _SNAPSHOT_EVERY
            time.sleep(_POLL)
        if self.signals:
            self._say("stop requested")

    # ------------------------------------------------------------------------ stopping

    def _shutdown(self) -> None:
        self._snapshot()
        signals_before = self.signals
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while self._leftovers():
            if time.monotonic() > deadline or self.signals > signals_before:
                break
            time.sleep(_POLL)
        leftovers = self._leftovers()
        if leftovers:
            pids = ", ".join(str(proc.pid) for proc in leftovers)
            self._say(f"killing what did not stop (pids {pids})")
            self._signal_all(signal.SIGKILL)
            deadline = time.monotonic() + KILL_TIMEOUT
            while self._leftovers() and time.monotonic() < deadline:
                time.sleep(_POLL)
        for child in self.children:
            with suppress(subprocess.TimeoutExpired):
                child.popen.wait(timeout=KILL_TIMEOUT)
            self._reap(child)
            if child.returncode is not None:
                self._say(f"{child.name} stopped ({_describe(child.returncode)})")
        for child in self.children:
            child.reader.join(timeout=2)
            if child.popen.stdout is not None:
                child.popen.stdout.close()

    def _reap(self, child: _Child) -> int | None:
        if child.returncode is None:
            child.returncode = child.popen.poll()
        return child.returncode

    def _snapshot(self) -> None:
        """Remember our children's descendants, to find any that leave their process group."""
        for child in self.children:
            if child.returncode is not None:
                continue
            with suppress(psutil.Error):
                for proc in psutil.Process(child.popen.pid).children(recursive=True):
                    self.descendants.setdefault(proc.pid, proc)

    def _groups(self) -> set[int]:
        return {child.popen.pid for child in self.children}

    def _signal_all(self, sig: int) -> None:
        groups = self._groups()
        for pgid in groups:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
        for proc in self.descendants.values():
            if _alive(proc) and _pgid(proc.pid) not in groups:
                with suppress(psutil.Error):
                    proc.send_signal(sig)

    def _leftovers(self) -> list[Any]:
        """Live processes of the stack: our children's groups and remembered descendants."""
        for child in self.children:
            self._reap(child)  # an exited child stays a zombie until reaped
        groups = self._groups()
        found: dict[int, Any] = {}
        for proc in psutil.process_iter():
            if _pgid(proc.pid) in groups:
                found[proc.pid] = proc
        for pid, proc in self.descendants.items():
            found.setdefault(pid, proc)
        return [proc for proc in found.values() if _alive(proc)]

    # -------------------------------------------------------------------------- output

    def _prefix(self, name: str, index: int) -> str:
        label = f"{name:<{self._width}} |"
        if self._colour:
            return f"\033[{_COLOURS[index % len(_COLOURS)]}m{label}\033[0m "
        return f"{label} "

    def _write(self, text: str) -> None:
        # The readers must keep draining their pipes even when our stdout is gone (closed
        # at start, sys.stdout is None).
        with self._output_lock, suppress(OSError, ValueError, AttributeError):
            sys.stdout.write(text)
            sys.stdout.flush()

    def _say(self, message: str) -> None:
        self._write(f"{self._prefix('system', len(self.commands))}{message}\n")

    def _copy_output(self, name: str, index: int, pipe: IO[bytes]) -> None:
        prefix = self._prefix(name, index)
        with suppress(OSError, ValueError):
            for raw in iter(pipe.readline, b""):
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                self._write(f"{prefix}{line}\n")


def _display(argv: list[str]) -> str:
    """argv for the log, without flower's passwords."""
    shown = [
        "--basic-auth=***" if argument.startswith("--basic-auth=") else argument
        for argument in argv
    ]
    return shlex.join(shown)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _alive(proc: Any) -> bool:
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _describe(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


def _exit_status(returncode: int | None) -> int:
    """The non-zero status run_stack returns when a process exited on its own."""
    if returncode is None or returncode == 0:
        return 1
    if returncode < 0:
        return 128 - returncode
    return returncode
