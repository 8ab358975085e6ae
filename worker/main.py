"""Entry point for `celery -A worker.main`."""

from worker.app import create_worker_app

app = create_worker_app()
