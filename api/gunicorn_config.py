"""gunicorn's settings (`--config python:api.gunicorn_config`): JSON logs, threads, metrics
cleanup."""

from __future__ import annotations

from typing import Any

from shared.ops.logs import gunicorn_logconfig
from shared.ops.metrics import forget_process
from shared.settings import Settings

logconfig_dict = gunicorn_logconfig()
# gunicorn would refuse a long request line or header with an HTML page; the app refuses them
# itself, at the same sizes, with a JSON:API error (api/limits.py). A field size of 0 would
# mean gunicorn's default, not unlimited.
limit_request_line = 0
limit_request_field_size = 65536
# An event stream holds its thread while it is open: enough threads for a full stream and
# wait capacity, and some left for every other request.
threads = Settings.from_env().web_threads


def child_exit(server: Any, worker: Any) -> None:
    # A worker that exited (restarted, killed) must not keep counting its requests in progress.
    forget_process(Settings.from_env().metrics_dir, worker.pid)
