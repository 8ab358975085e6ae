"""One attempt of one webhook delivery: claim it, sign it, send it, record what came back.

Deliveries are at least once: the receiver dedupes on `webhook-id`, which stays the same on
every attempt of a delivery, and so does the body. An attempt first moves the delivery's
`next_attempt_at` past its own timeout (a lease), so a duplicate message finds it not due
and does nothing, and a webhooks process that dies mid-attempt leaves it to the sweeper once
the lease runs out.

Signatures follow the Standard Webhooks specification, made by its own package; the request
goes through requests-hardened, which connects to the address it checked (no private target
unless allowed, DNS rebinding included) and never follows a redirect.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import random
from dataclasses import dataclass
from enum import StrEnum
from functools import cache

import requests
from requests_hardened import Config, Manager
from sqlalchemy import Engine, func, select, update
from standardwebhooks import Webhook as Signer

from shared.ops import metrics
from shared.settings import Settings
from shared.store.models import DeliveryStatus, Job, Webhook, WebhookDelivery

logger = logging.getLogger(__name__)

USER_AGENT = "timebatch-webhooks/1"
# Beyond its timeout, what an attempt may take (claim, sign, record) before the sweeper
# takes the delivery for lost.
LEASE_MARGIN = dt.timedelta(seconds=30)
JITTER = 0.1
ERROR_LENGTH = 300


class Result(StrEnum):
    DELIVERED = "delivered"
    RETRIED = "retried"
    FAILED = "failed"
    # The endpoint answered 410 Gone: it is disabled, the delivery failed.
    DISABLED = "disabled"
    # Not due, no longer pending, or its endpoint was deleted: a duplicate message.
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Attempt:
    result: Result
    # Seconds until the next attempt is due, when there is one.
    retry_in: float | None = None


@dataclass(frozen=True)
class _Claimed:
    message_id: str
    payload: bytes
    attempts: int
    url: str
    secret: str
    enabled: bool
    webhook_id: int
    job_finished_at: dt.datetime | None


@cache
def _manager(allow_private: bool, timeout: float) -> Manager:
    return Manager(
        Config(
            ip_filter_enable=not allow_private,
            ip_filter_allow_loopback_ips=allow_private,
            never_redirect=True,
            default_timeout=(timeout, timeout),
            user_agent_override=USER_AGENT,
        )
    )


def attempt(engine: Engine, settings: Settings, delivery_id: int) -> Attempt:
    """Attempt the delivery if it is due; say what happened and when to try again."""
    claimed = _claim(engine, delivery_id, dt.timedelta(seconds=settings.webhook_timeout))
    if claimed is None:
        return Attempt(Result.SKIPPED)
    if not claimed.enabled:
        _record(engine, delivery_id, DeliveryStatus.FAILED, None, "the endpoint is disabled")
        metrics.webhook_attempted(Result.FAILED)
        return Attempt(Result.FAILED)
    status, error, retry_after = _send(settings, claimed)
    if status is not None and 200 <= status < 300:
        _record(engine, delivery_id, DeliveryStatus.DELIVERED, status, None)
        metrics.webhook_attempted(Result.DELIVERED, since=claimed.job_finished_at)
        return Attempt(Result.DELIVERED)
    if status == 410:
        _record(engine, delivery_id, DeliveryStatus.FAILED, status, error, disable=True)
        metrics.webhook_attempted(Result.DISABLED)
        logger.warning("webhook %s answered 410 Gone: disabled", claimed.webhook_id)
        return Attempt(Result.DISABLED)
    schedule = settings.webhook_retry_schedule
    if claimed.attempts > len(schedule):
        _record(engine, delivery_id, DeliveryStatus.FAILED, status, error)
        metrics.webhook_attempted(Result.FAILED)
        return Attempt(Result.FAILED)
    delay = next_delay(schedule, claimed.attempts, status, retry_after)
    _record(engine, delivery_id, DeliveryStatus.PENDING, status, error, retry_in=delay)
    metrics.webhook_attempted(Result.RETRIED)
    return Attempt(Result.RETRIED, retry_in=delay)


def next_delay(
    schedule: tuple[float, ...], attempts: int, status: int | None, retry_after: float | None
) -> float:
    """The wait before the next attempt, after `attempts` of them: the schedule's, with jitter
    so that the deliveries one outage held back do not all come back at once; a 429 or 5xx
    that says when to come back is taken at its word, up to the schedule's longest wait."""
    if retry_after is not None and status is not None and (status == 429 or status >= 500):
        return min(retry_after, max(schedule, default=0.0))
    delay = schedule[attempts - 1]
    return delay * random.uniform(1 - JITTER, 1 + JITTER)


def _claim(engine: Engine, delivery_id: int, timeout: dt.timedelta) -> _Claimed | None:
    delivery = WebhookDelivery
    with engine.begin() as connection:
        row = connection.execute(
            update(delivery)
            .where(
                delivery.id == delivery_id,
                delivery.status == DeliveryStatus.PENDING,
                delivery.next_attempt_at <= func.now(),
                Webhook.id == delivery.webhook_id,
            )
            .values(
                attempts=delivery.attempts + 1, next_attempt_at=func.now() + timeout + LEASE_MARGIN
            )
            .returning(
                delivery.message_id,
                delivery.payload,
                delivery.attempts,
                Webhook.url,
                Webhook.secret,
                Webhook.enabled,
                Webhook.id.label("webhook_id"),
                select(Job.finished_at)
                .where(Job.id == delivery.job_id)
                .scalar_subquery()
                .label("job_finished_at"),
            )
        ).one_or_none()
    return None if row is None else _Claimed(**row._asdict())


def _send(settings: Settings, claimed: _Claimed) -> tuple[int | None, str | None, float | None]:
    """POST the signed body; the response status (None when there was none), what went
    wrong, and the Retry-After the receiver asked for."""
    now = dt.datetime.now(dt.UTC)
    body = claimed.payload.decode()
    headers = {
        "content-type": "application/json",
        "webhook-id": claimed.message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Signer(claimed.secret).sign(claimed.message_id, now, body),
    }
    manager = _manager(settings.webhook_allow_private, float(settings.webhook_timeout))
    try:
        with manager.get_session() as session:
            response = session.post(claimed.url, data=claimed.payload, headers=headers)
            response.close()
    except requests.RequestException as exc:
        return None, _short(f"{type(exc).__name__}: {exc}"), None
    error = None if response.ok else f"HTTP {response.status_code}"
    return response.status_code, error, _retry_after(response.headers.get("retry-after"))


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds: a number of seconds or an HTTP date (RFC 9110)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max((when - dt.datetime.now(dt.UTC)).total_seconds(), 0.0)


def _short(text: str) -> str:
    return text if len(text) <= ERROR_LENGTH else text[: ERROR_LENGTH - 1] + "…"


def _record(
    engine: Engine,
    delivery_id: int,
    status: DeliveryStatus,
    response_status: int | None,
    error: str | None,
    *,
    retry_in: float | None = None,
    disable: bool = False,
) -> None:
    with engine.begin() as connection:
        connection.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id)
            .values(
                status=status,
                last_response_status=response_status,
                last_error=error,
                next_attempt_at=None
                if retry_in is None
                else func.now() + dt.timedelta(seconds=retry_in),
                delivered_at=func.now() if status == DeliveryStatus.DELIVERED else None,
            )
        )
        if disable:
            connection.execute(
                update(Webhook)
                .where(
                    Webhook.id
                    == select(WebhookDelivery.webhook_id)
                    .where(WebhookDelivery.id == delivery_id)
                    .scalar_subquery()
                )
                .values(enabled=False, updated_at=func.now())
            )
