"""The Flask front: negotiate, authenticate, validate, store a job, publish its id."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from flask import Blueprint, Flask
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.routing import BaseConverter

from api.auth import authenticate
from api.context import AppServices, Publisher, close_db
from api.errors import register_error_handlers
from api.limits import refuse_oversized
from api.telemetry import bind_principal, register_telemetry
from api.views import bulk, health, jobs, meta, reading, webhooks
from shared.jobs.queue import create_celery, publish_deliveries, publish_job, queue_depth
from shared.ops import metrics
from shared.ops.logs import configure_logging
from shared.settings import Settings
from shared.store.engine import make_engine, make_session_factory
from shared.store.notify import JobListener

logger = logging.getLogger(__name__)


class DigitsConverter(BaseConverter):
    """A resource id in a path: ASCII digits, left a string for parse_id. So `approve` is no
    entry's id, and /time_entries/approve answers PATCH alone (405 and Allow say so)."""

    regex = "[0-9]+"


def create_app(
    settings: Settings | None = None,
    *,
    sessions: sessionmaker[Session] | None = None,
    publish: Publisher | None = None,
) -> Flask:
    settings = settings or Settings.from_env()
    configure_logging(logging.INFO, libraries=logging.WARNING)
    if settings.metrics_dir is not None:
        metrics.prepare_directory(settings.metrics_dir, clear=False)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.url_map.converters["digits"] = DigitsConverter
    if sessions is None:
        sessions = make_session_factory(make_engine(settings))
    celery = create_celery(settings)

    def publish_or_defer(job_id: str, rank: int) -> None:
        try:
            publish_job(celery, job_id, rank)
        except Exception:
            # The job row is committed: the sweeper publishes it once the broker is back.
            logger.warning("broker unavailable; job %s left for the sweeper", job_id)

    def publish_deliveries_or_defer(delivery_ids: Sequence[int]) -> None:
        try:
            publish_deliveries(celery, delivery_ids)
        except Exception:
            logger.warning("broker unavailable; deliveries %s left for the sweeper", delivery_ids)

    def broker_ping() -> None:
        with celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)

    app.extensions["timebatch"] = AppServices(
        settings=settings,
        sessions=sessions,
        publish=publish if publish is not None else publish_or_defer,
        publish_deliveries=publish_deliveries_or_defer,
        broker_ping=broker_ping,
        queue_depth=lambda: queue_depth(celery, settings.queue),
        listener=JobListener(
            settings.sqlalchemy_url, settings.wait_capacity, settings.stream_capacity
        ),
    )
    app.teardown_appcontext(close_db)
    register_error_handlers(app)
    register_telemetry(app)
    app.before_request(refuse_oversized)

    api_v2 = Blueprint("api_v2", __name__, url_prefix="/api/v2")
    api_v2.before_request(authenticate)
    api_v2.before_request(bind_principal)
    api_v2.register_blueprint(bulk.blueprint)
    api_v2.register_blueprint(jobs.blueprint)
    api_v2.register_blueprint(reading.blueprint)
    api_v2.register_blueprint(webhooks.blueprint)
    app.register_blueprint(api_v2)
    app.register_blueprint(health.blueprint)
    # Outside api_v2's authentication: scrapers and API clients' generators read these.
    app.register_blueprint(meta.blueprint)
    return app
