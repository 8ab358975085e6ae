"""The embedded PostgreSQL and Redis servers, started for real in a temporary data dir."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
import redis

from shared.devstack import embedded
from shared.devstack.embedded import (
    EmbeddedServerError,
    EmbeddedServers,
    embedded_settings,
    start_embedded,
)
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[3]


def server_processes(data_dir: Path) -> list[Any]:
    """Live postgres and redis-server processes of data_dir, with their children."""
    found: dict[int, Any] = {}
    for proc in psutil.process_iter(["name", "cmdline"]):
        name = proc.info["name"] or ""
        cmdline = " ".join(proc.info["cmdline"] or [])
        if name in {"postgres", "redis-server"} and str(data_dir) in cmdline:
            found[proc.pid] = proc
            with suppress(psutil.Error):
                found.update((child.pid, child) for child in proc.children(recursive=True))
    return [proc for proc in found.values() if alive(proc)]


def alive(proc: Any) -> bool:
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def pid_alive(pid: int) -> bool:
    try:
        return alive(psutil.Process(pid))
    except psutil.Error:
        return False


def wait_gone(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} still running after {timeout}s"
        time.sleep(0.05)


def pg_conninfo(servers: EmbeddedServers) -> str:
    assert servers.database_url.startswith("postgresql+psycopg://")
    return servers.database_url.replace("postgresql+psycopg://", "postgresql://", 1)


def redis_client(servers: EmbeddedServers) -> redis.Redis:
    assert servers.broker_url == f"redis+socket://{servers.redis_socket}"
    return redis.Redis(unix_socket_path=str(servers.redis_socket))


@contextmanager
def embedded_data_dir() -> Iterator[Path]:
    """A data dir for embedded servers; it fails the test that leaves any of them running.

    Not under tmp_path: as root, postgres runs as the pgserver user, which pgserver lets
    through every parent directory (chmod o+rx), and any pytest session that starts meanwhile
    on this machine sets /tmp/pytest-of-<user> back to 0700, locking postgres out mid-test.
    """
    base = Path(tempfile.mkdtemp(prefix="timebatch-embedded-"))
    path = base / "data"
    try:
        yield path
    finally:
        leftovers = server_processes(path.resolve())
        for proc in leftovers:  # a failed test must not leak servers
            with suppress(psutil.Error):
                proc.kill()
        shutil.rmtree(base, ignore_errors=True)
    assert not leftovers, f"servers left running: {leftovers}"


@pytest.fixture
def data_dir() -> Iterator[Path]:
    with embedded_data_dir() as path:
        yield path


def test_start_attach_and_stop(data_dir: Path) -> None:
    servers = start_embedded(data_dir)
    try:
        assert servers.started_here
        assert servers.data_dir == data_dir.resolve()
        assert servers.database_url.startswith("postgresql+psycopg://postgres@/timebatch?host=")
        assert servers.redis_socket == data_dir.resolve() / "redis" / "redis.sock"
        with psycopg.connect(pg_conninfo(servers)) as conn:
            row = conn.execute("SELECT current_database(), current_user").fetchone()
        assert row == ("timebatch", "postgres")
        with redis_client(servers) as client:
            assert client.ping()
        running = server_processes(data_dir.resolve())
        assert {proc.pid for proc in running} >= {servers.postgres_pid, servers.redis_pid}

        second = start_embedded(data_dir)
        assert not second.started_here
        assert (second.database_url, second.broker_url) == (
            servers.database_url,
            servers.broker_url,
        )
        assert (second.postgres_pid, second.redis_pid) == (
            servers.postgres_pid,
            servers.redis_pid,
        )
        second.stop()
        assert all(alive(proc) for proc in running)
        with psycopg.connect(pg_conninfo(servers)) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        with redis_client(servers) as client:
            assert client.ping()
    finally:
        servers.stop()

    assert not any(alive(proc) for proc in running)
    assert server_processes(data_dir.resolve()) == []
    assert not (data_dir / "postgres" / "postmaster.pid").exists()
    assert not servers.redis_socket.exists()
    servers.stop()  # a second stop is harmless


def test_data_and_queued_messages_survive_a_restart(data_dir: Path) -> None:
    servers = start_embedded(data_dir)
    try:
        with psycopg.connect(pg_conninfo(servers), autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (value text)")
            conn.execute("INSERT INTO kept VALUES ('row')")
        with redis_client(servers) as client:
            client.rpush("timebatch", b"message")
    finally:
        servers.stop()

    servers = start_embedded(data_dir)
    try:
        assert servers.started_here
        with psycopg.connect(pg_conninfo(servers)) as conn:
            assert conn.execute("SELECT value FROM kept").fetchall() == [("row",)]
        with redis_client(servers) as client:
            assert client.lrange("timebatch", 0, -1) == [b"message"]
    finally:
        servers.stop()


def test_servers_of_a_killed_owner_are_adopted(data_dir: Path) -> None:
    code = (
        "import sys, time\n"
        "from shared.devstack.embedded import start_embedded\n"
        "servers = start_embedded(sys.argv[1])\n"
        "print(servers.started_here, flush=True)\n"
        "time.sleep(60)\n"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", code, str(data_dir)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None
        assert owner.stdout.readline().strip() == "True"
        attached = start_embedded(data_dir)
        assert not attached.started_here  # its owner is alive
        attached.stop()
        assert len(server_processes(data_dir.resolve())) >= 2
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        if owner.stdout is not None:
            owner.stdout.close()

    adopted = start_embedded(data_dir)
    try:
        assert adopted.started_here
    finally:
        adopted.stop()
    assert server_processes(data_dir.resolve()) == []


@pytest.mark.parametrize("first_line", ["another process", "garbage"])
def test_stale_postmaster_pid_is_ignored(data_dir: Path, first_line: str) -> None:
    start_embedded(data_dir).stop()
    # After a reboot the pid in postmaster.pid may belong to an unrelated process; a crash
    # may leave a file that is not even a pid.
    pid = str(os.getpid()) if first_line == "another process" else "\x00\x00"
    pidfile = data_dir / "postgres" / "postmaster.pid"
    pidfile.write_text(f"{pid}\n{data_dir / 'postgres'}\n0\n5432\n\n\n\nready\n")
    servers = start_embedded(data_dir)
    try:
        assert servers.started_here
        with psycopg.connect(pg_conninfo(servers)) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        servers.stop()


def test_embedded_settings_starts_attaches_and_stops(data_dir: Path) -> None:
    settings = Settings(database_url=None, broker_url=None, data_dir=data_dir)
    assert settings.embedded
    with embedded_settings(settings) as outer:
        assert outer.database_url is not None and outer.broker_url is not None
        assert outer.broker_url.startswith("redis+socket://")
        assert outer.data_dir == settings.data_dir
        # A receiver on this machine is a fair webhook target in development.
        assert outer.webhook_allow_private and not settings.webhook_allow_private
        with embedded_settings(settings) as inner:  # like `timebatch demo load` next to `run`
            assert (inner.database_url, inner.broker_url) == (
                outer.database_url,
                outer.broker_url,
            )
        with psycopg.connect(outer.sqlalchemy_url.replace("+psycopg", "", 1)) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    assert server_processes(data_dir.resolve()) == []


def test_embedded_settings_leaves_configured_urls_alone(tmp_path: Path) -> None:
    settings = Settings(
        database_url="postgresql+psycopg://u:p@db.invalid/x",
        broker_url="redis://broker.invalid:6379/0",
        data_dir=tmp_path / "unused",
    )
    with embedded_settings(settings) as yielded:
        assert yielded is settings
    assert not (tmp_path / "unused").exists()


# ---------------------------------------------------------------------------- when it goes wrong


def test_a_data_dir_too_deep_for_a_socket_path_gets_a_private_socket_dir(data_dir: Path) -> None:
    deep = data_dir / ("d" * 80)
    assert len(os.fsencode(deep / "redis" / "redis.sock")) > 107  # sun_path's limit
    servers = start_embedded(deep)
    socket_dir = servers.redis_socket.parent
    try:
        assert socket_dir.parent == Path(tempfile.gettempdir())
        assert socket_dir.name.startswith(f"timebatch-{os.geteuid()}-")
        assert stat.S_IMODE(socket_dir.lstat().st_mode) == 0o700
        with redis_client(servers) as client:
            assert client.ping()
    finally:
        servers.stop()
    assert not pid_alive(servers.redis_pid)
    assert not socket_dir.exists()

    # Someone else may plant a link where that dir goes: it is refused, nothing left running.
    elsewhere = data_dir / "elsewhere"
    elsewhere.mkdir()
    socket_dir.symlink_to(elsewhere)
    try:
        with pytest.raises(EmbeddedServerError, match=r"is not a directory owned by us"):
            start_embedded(deep)
    finally:
        socket_dir.unlink()
    assert list(elsewhere.iterdir()) == []


def test_a_data_dir_locked_too_long_is_refused(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedded, "LOCK_TIMEOUT", 0.5)
    data_dir.mkdir(parents=True)
    # flock belongs to the open file: this descriptor holds it like another process would.
    holder = os.open(data_dir / ".embedded.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        started = time.monotonic()
        with pytest.raises(EmbeddedServerError, match=r"another process kept .* locked for 0s"):
            start_embedded(data_dir)
        assert time.monotonic() - started >= 0.5
    finally:
        os.close(holder)
    assert not (data_dir / "postgres").exists()


def test_a_postgres_that_cannot_start_shows_its_log(data_dir: Path) -> None:
    start_embedded(data_dir).stop()
    config = data_dir / "postgres" / "postgresql.conf"
    config.write_text(config.read_text() + "\nno_such_setting = on\n")
    with pytest.raises(EmbeddedServerError) as raised:
        start_embedded(data_dir)
    message = str(raised.value)
    assert message.startswith(f"PostgreSQL in {data_dir.resolve() / 'postgres'} did not start: ")
    assert f"last lines of {data_dir.resolve() / 'postgres' / 'log'}:" in message
    assert 'unrecognized configuration parameter "no_such_setting"' in message
    assert not (data_dir / "redis" / "redis.pid").exists()  # Redis was not even tried


def test_a_redis_that_cannot_start_says_why_and_stops_postgres(data_dir: Path) -> None:
    log = data_dir / "redis" / "redis.log"
    log.mkdir(parents=True)  # redis-server cannot open its log file, so it refuses to start
    with pytest.raises(EmbeddedServerError) as raised:
        start_embedded(data_dir)
    message = str(raised.value)
    assert message.startswith("redis-server exited with 1: ")
    assert "Can't open the log file" in message
    assert f"(no log at {log.resolve()})" in message
    # The PostgreSQL this call started is stopped again (the fixture checks none is left).
    assert not (data_dir / "postgres" / "postmaster.pid").exists()


def test_a_redis_that_lost_its_socket_is_waited_for_then_stopped_by_signal(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    servers = start_embedded(data_dir)
    try:
        servers.redis_socket.unlink()  # a temp cleaner, say: redis-server runs on, unreachable
        monkeypatch.setattr(embedded, "START_TIMEOUT", 0.5)
        with pytest.raises(EmbeddedServerError, match=r"Redis in .* does not answer on "):
            start_embedded(data_dir)
        assert pid_alive(servers.postgres_pid)  # its owner is alive: the attach left it alone
    finally:
        servers.stop()
    assert f"sending SIGTERM to {servers.redis_pid}" in caplog.text
    assert not pid_alive(servers.redis_pid)


def test_a_killed_redis_starts_again_with_its_queue(data_dir: Path) -> None:
    servers = start_embedded(data_dir)
    try:
        with redis_client(servers) as client:
            client.rpush("timebatch", b"message")  # in the AOF before the reply
        os.kill(servers.redis_pid, signal.SIGKILL)  # the OOM killer, say
        wait_gone(servers.redis_pid)
        assert servers.redis_socket.is_socket()  # left behind, nothing listening
    finally:
        servers.stop()
    assert not pid_alive(servers.postgres_pid)
    # Its pid is free for others: redis.pid may come to name an unrelated process.
    (data_dir / "redis" / "redis.pid").write_text(f"{os.getpid()}\n")

    restarted = start_embedded(data_dir)
    try:
        assert restarted.started_here and restarted.redis_pid != servers.redis_pid
        with redis_client(restarted) as client:
            assert client.lrange("timebatch", 0, -1) == [b"message"]
    finally:
        restarted.stop()


def test_a_postgres_that_does_not_stop_is_killed_and_recovers(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    servers = start_embedded(data_dir)
    with psycopg.connect(pg_conninfo(servers), autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (value text)")
        conn.execute("INSERT INTO kept VALUES ('row')")
    postmaster = psutil.Process(servers.postgres_pid)
    monkeypatch.setattr(embedded, "STOP_TIMEOUT", 1.0)
    postmaster.suspend()  # SIGSTOP: it cannot act on pg_ctl's SIGINT
    try:
        servers.stop()
    finally:
        with suppress(psutil.Error):
            postmaster.resume()
    assert "pg_ctl stop failed" in caplog.text
    assert (
        f"PostgreSQL in {servers.postgres_dir} (pid {postmaster.pid}) did not stop" in caplog.text
    )
    assert not alive(postmaster)

    # Until its parent (init) reaps it, the killed postmaster's pid still exists, and a new
    # postmaster refuses the socket lock file naming it.
    deadline = time.monotonic() + 10
    while psutil.pid_exists(postmaster.pid):
        assert time.monotonic() < deadline, f"pid {postmaster.pid} was never reaped"
        time.sleep(0.05)
    # The next start finds the killed server's postmaster.pid stale and recovers its data.
    recovered = start_embedded(data_dir)
    try:
        assert recovered.started_here and recovered.postgres_pid != postmaster.pid
        with psycopg.connect(pg_conninfo(recovered)) as conn:
            assert conn.execute("SELECT value FROM kept").fetchall() == [("row",)]
    finally:
        recovered.stop()
