"""The embedded PostgreSQL and Redis servers, started for real in a temporary data dir."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
import redis

from shared.devstack.embedded import EmbeddedServers, embedded_settings, start_embedded
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


def pg_conninfo(servers: EmbeddedServers) -> str:
    assert servers.database_url.startswith("postgresql+psycopg://")
    return servers.database_url.replace("postgresql+psycopg://", "postgresql://", 1)


def redis_client(servers: EmbeddedServers) -> redis.Redis:
    assert servers.broker_url == f"redis+socket://{servers.redis_socket}"
    return redis.Redis(unix_socket_path=str(servers.redis_socket))


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "data"
    yield path
    leftovers = server_processes(path.resolve())
    for proc in leftovers:  # a failed test must not leak servers
        with suppress(psutil.Error):
            proc.kill()
    assert not leftovers, f"servers left running: {leftovers}"


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


def test_stale_postmaster_pid_is_ignored(data_dir: Path) -> None:
    start_embedded(data_dir).stop()
    # After a reboot the pid in postmaster.pid may belong to an unrelated process.
    pidfile = data_dir / "postgres" / "postmaster.pid"
    pidfile.write_text(f"{os.getpid()}\n{data_dir / 'postgres'}\n0\n5432\n\n\n\nready\n")
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
