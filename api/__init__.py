"""The Flask front: negotiate, authenticate, validate, store a job, publish its id."""

from __future__ import annotations

import logging

from flask import Blueprint, Flask
from sqlalchemy.orm import Session, sessionmaker

from api.auth import authenticate
from api.context import AppServices, Publisher, close_db
from api.errors import register_error_handlers
from api.views import bulk, health, jobs
from shared.db import make_engine, make_session_factory
from shared.queue import create_celery, publish_job
from shared.settings import Settings

logger = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    *,
    sessions: sessionmaker[Session] | None = None,
    publish: Publisher | None = None,
) -> Flask:
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    if sessions is None:
        sessions = make_session_factory(make_engine(settings))
    celery = create_celery(settings)

    def publish_or_defer(job_id: str) -> None:
        try:
            publish_job(celery, job_id)
        except Exception:
            # The job row is committed: the sweeper publishes it once the broker is back.
            logger.warning("broker unavailable; job %s left for the sweeper", job_id)

    def broker_ping() -> None:
        with celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)

    app.extensions["timebatch"] = AppServices(
        settings=settings,
        sessions=sessions,
        publish=publish if publish is not None else publish_or_defer,
        broker_ping=broker_ping,
    )
    app.teardown_appcontext(close_db)
    register_error_handlers(app)

    api_v2 = Blueprint("api_v2", __name__, url_prefix="/api/v2")
    api_v2.before_request(authenticate)
    api_v2.register_blueprint(bulk.blueprint)
    api_v2.register_blueprint(jobs.blueprint)
    app.register_blueprint(api_v2)
    app.register_blueprint(health.blueprint)
    return app
