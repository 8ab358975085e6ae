"""Servers of a test's own, for faults that take a server down: never the shared ones.

A private `redis-server` on a free port, a RabbitMQ virtual host whose connections a test
may close, and an embedded PostgreSQL that a test may stop and start again. Each keeps its
address across a restart, so the processes using it reconnect to the same URL.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import redis
from kombu.connection import Connection

from bench.stack import free_port
from shared.devstack.embedded import EmbeddedServers, start_embedded


def wait_until(condition: object, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class PrivateRedis:
    """A `redis-server` on a free loopback port that keeps nothing on disk: a restart loses
    every message, as a crashed broker without persistence does."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def _answering(self) -> bool:
        try:
            with self.client() as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def start(self) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise RuntimeError("redis-server is not installed")
        self.workdir.mkdir(parents=True, exist_ok=True)
        command = [
            executable, "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
        ]  # fmt: skip
        with (self.workdir / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        wait_until(self._answering, f"redis-server on port {self.port}")

    def kill(self) -> None:
        if self.process is None:
            return
        self.process.kill()
        self.process.wait(timeout=10)
        self.process = None

    def restart(self, down_for: float = 0.0) -> None:
        self.kill()
        time.sleep(down_for)  # how long the broker stays away is the fault itself
        self.start()

    def __enter__(self) -> PrivateRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def rabbitmqctl() -> str | None:
    return shutil.which("rabbitmqctl")


class PrivateVhost:
    """A RabbitMQ virtual host of a test's own on the machine's RabbitMQ: closing every
    connection of it is as much of a broker restart as a test may cause there."""

    def __init__(self, amqp_url: str) -> None:
        self.name = f"timebatch-test-{uuid.uuid4().hex[:8]}"
        self.base_url = amqp_url.rstrip("/")

    @property
    def url(self) -> str:
        return f"{self.base_url}/{self.name}"

    def ctl(self, *args: str) -> str:
        executable = rabbitmqctl()
        if executable is None:
            raise RuntimeError("rabbitmqctl is not installed")
        done = subprocess.run(
            [executable, "-q", *args], capture_output=True, text=True, timeout=60, check=True
        )
        return done.stdout

    def create(self) -> None:
        self.ctl("add_vhost", self.name)
        user = self.base_url.split("//", 1)[1].split(":", 1)[0]
        self.ctl("set_permissions", "-p", self.name, user, ".*", ".*", ".*")

    def close_connections(self) -> int:
        """Close every client connection of the vhost; returns how many there were."""
        listed = self.ctl("list_connections", "-p", self.name, "--no-table-headers", "name")
        count = len([line for line in listed.splitlines() if line.strip()])
        self.ctl("close_all_connections", "-p", self.name, "a test restarts the broker")
        return count

    def delete(self) -> None:
        self.ctl("delete_vhost", self.name)

    def __enter__(self) -> PrivateVhost:
        self.create()
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()


class PrivatePostgres:
    """An embedded PostgreSQL in a directory of a test's own, stopped and started at will;
    its URL (a unix socket in that directory) stays the same."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.servers: EmbeddedServers | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the private PostgreSQL has not been started")
        return self._url

    def start(self) -> None:
        self.servers = start_embedded(self.data_dir)
        if self._url is not None and self.servers.database_url != self._url:
            raise AssertionError("the restarted PostgreSQL moved to another address")
        self._url = self.servers.database_url

    def stop(self) -> None:
        if self.servers is not None:
            self.servers.stop()
            self.servers = None

    def __enter__(self) -> PrivatePostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def amqp_url() -> str:
    return os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672")


def amqp_reachable(url: str) -> bool:
    try:
        with Connection(url, connect_timeout=3) as connection:  # type: ignore[no-untyped-call]
            connection.ensure_connection(max_retries=1, timeout=3)
    except Exception:
        return False
    return True
