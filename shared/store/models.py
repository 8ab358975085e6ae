"""The schema, as typed SQLAlchemy 2 models. Alembic migrations are the only way it is made."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

NOW = text("now()")
FALSE = text("false")
TRUE = text("true")
ZERO = text("0")


class Operation(StrEnum):
    """What a job does to its batch: the five bulk operations of the spec."""

    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    APPROVE = "approve"
    UNAPPROVE = "unapprove"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


# A job that may still run; one that has a result to serve; one that will never change again.
UNFINISHED_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)
FINISHED_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED)
ENDED_STATUSES = (*FINISHED_STATUSES, JobStatus.CANCELED)


def _sql_list(values: Iterable[str]) -> str:
    return ", ".join(f"'{value}'" for value in values)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {
        dt.datetime: DateTime(timezone=True),
        dict[str, Any]: JSONB,
    }


class Organization(Base):
    __tablename__ = "organizations"
    __table_args__ = (
        CheckConstraint("char_length(default_currency) = 3", name="default_currency_iso"),
        CheckConstraint("char_length(reporting_currency) = 3", name="reporting_currency_iso"),
        CheckConstraint("internal_overhead_rate >= 0", name="internal_overhead_rate_positive"),
        CheckConstraint("facility_overhead_rate >= 0", name="facility_overhead_rate_positive"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    default_currency: Mapped[str] = mapped_column(String(3))
    reporting_currency: Mapped[str] = mapped_column(String(3))
    time_zone: Mapped[str] = mapped_column(String(64), server_default=text("'UTC'"))
    approval_workflow: Mapped[bool] = mapped_column(Boolean, server_default=FALSE)
    # Overhead per hour of tracked time, in cents of the default currency.
    internal_overhead_rate: Mapped[int] = mapped_column(Integer, server_default=ZERO)
    facility_overhead_rate: Mapped[int] = mapped_column(Integer, server_default=ZERO)
    created_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)


class ExchangeRate(Base):
    """How many units of the organization's default currency one unit of `currency` is worth."""

    __tablename__ = "exchange_rates"
    __table_args__ = (
        UniqueConstraint("organization_id", "currency"),
        CheckConstraint("rate > 0", name="rate_positive"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    currency: Mapped[str] = mapped_column(String(3))
    rate: Mapped[Decimal] = mapped_column(Numeric(18, 8))


class Person(Base):
    __tablename__ = "people"
    __table_args__ = (
        UniqueConstraint("organization_id", "id"),
        CheckConstraint("cost_rate IS NULL OR cost_rate >= 0", name="cost_rate_positive"),
        CheckConstraint(
            "(cost_rate IS NULL) = (cost_rate_currency IS NULL)", name="cost_rate_has_currency"
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    organization_id: Mapped[int] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    first_name: Mapped[str] = mapped_column(String(100))
    last_name: Mapped[str] = mapped_column(String(100))
    email: Mapped[str | None] = mapped_column(String(254))
    # Cost per hour in cents of cost_rate_currency; a person without a rate cannot track time.
    cost_rate: Mapped[int | None] = mapped_column(Integer)
    cost_rate_currency: Mapped[str | None] = mapped_column(String(3))
    manager_id: Mapped[int | None] = mapped_column(ForeignKey("people.id", ondelete="SET NULL"))
    can_manage_time: Mapped[bool] = mapped_column(Boolean, server_default=FALSE)
    can_approve: Mapped[bool] = mapped_column(Boolean, server_default=FALSE)
    can_approve_all: Mapped[bool] = mapped_column(Boolean, server_default=FALSE)
    created_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    # SHA-256 of the token: the token itself is shown once and never stored.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id", ondelete="CASCADE"), index=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    read_only: Mapped[bool] = mapped_column(Boolean, server_default=FALSE)
    created_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)


class Service(Base):
    __tablename__ = "services"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    organization_id: Mapped[int] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    billable: Mapped[bool] = mapped_column(Boolean, server_default=TRUE)
    approver_id: Mapped[int | None] = mapped_column(ForeignKey("people.id", ondelete="SET NULL"))
    created_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)


class Task(Base):
    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    organization_id: Mapped[int] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    service_id: Mapped[int | None] = mapped_column(ForeignKey("services.id", ondelete="SET NULL"))
    title: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)


class TimeEntry(Base):
    __tablename__ = "time_entries"
    # No foreign keys: the domain checks every reference of a batch set-based, under
    # FOR KEY SHARE (shared/domain/context.py), instead of one trigger call per row and constraint.
    __table_args__ = (
        CheckConstraint("time >= 0", name="time_positive"),
        CheckConstraint("billable_time >= 0", name="billable_time_positive"),
        Index("ix_time_entries_organization_id_date", "organization_id", "date"),
        Index("ix_time_entries_person_id_date", "person_id", "date"),
        Index("ix_time_entries_service_id", "service_id"),
        Index("ix_time_entries_task_id", "task_id"),
        Index("ix_time_entries_organization_id_updated_at", "organization_id", "updated_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    organization_id: Mapped[int] = mapped_column(BigInteger)
    person_id: Mapped[int] = mapped_column(BigInteger)
    service_id: Mapped[int] = mapped_column(BigInteger)
    task_id: Mapped[int | None] = mapped_column(BigInteger)
    date: Mapped[dt.date] = mapped_column(Date)
    time: Mapped[int] = mapped_column(Integer, server_default=ZERO)
    billable_time: Mapped[int] = mapped_column(Integer, server_default=ZERO)
    recognized_time: Mapped[int] = mapped_column(Integer, server_default=ZERO)
    note: Mapped[str | None] = mapped_column(Text)
    track_method_id: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    started_at: Mapped[dt.datetime | None] = mapped_column()
    timer_started_at: Mapped[dt.datetime | None] = mapped_column()
    timer_stopped_at: Mapped[dt.datetime | None] = mapped_column()
    approved: Mapped[bool] = mapped_column(Boolean, server_default=FALSE)
    approved_at: Mapped[dt.datetime | None] = mapped_column()
    approver_id: Mapped[int | None] = mapped_column(BigInteger)
    calendar_event_id: Mapped[int | None] = mapped_column(BigInteger)
    invoice_attribution_id: Mapped[int | None] = mapped_column(BigInteger)
    invoiced: Mapped[bool] = mapped_column(Boolean, server_default=FALSE)
    overhead: Mapped[bool] = mapped_column(Boolean, server_default=TRUE)
    rejected: Mapped[bool] = mapped_column(Boolean, server_default=FALSE)
    rejected_reason: Mapped[str | None] = mapped_column(Text)
    rejected_at: Mapped[dt.datetime | None] = mapped_column()
    rejecter_id: Mapped[int | None] = mapped_column(BigInteger)
    submitted: Mapped[bool] = mapped_column(Boolean, server_default=FALSE)
    currency: Mapped[str] = mapped_column(String(3))
    currency_default: Mapped[str] = mapped_column(String(3))
    currency_normalized: Mapped[str] = mapped_column(String(3))
    # Money in cents of the currency named by the matching currency column.
    cost: Mapped[int] = mapped_column(BigInteger, server_default=ZERO)
    cost_default: Mapped[int] = mapped_column(BigInteger, server_default=ZERO)
    cost_normalized: Mapped[int] = mapped_column(BigInteger, server_default=ZERO)
    work_cost: Mapped[int] = mapped_column(BigInteger, server_default=ZERO)
    work_cost_default: Mapped[int] = mapped_column(BigInteger, server_default=ZERO)
    work_cost_normalized: Mapped[int] = mapped_column(BigInteger, server_default=ZERO)
    overhead_cost: Mapped[int] = mapped_column(BigInteger, server_default=ZERO)
    overhead_cost_default: Mapped[int] = mapped_column(BigInteger, server_default=ZERO)
    overhead_cost_normalized: Mapped[int] = mapped_column(BigInteger, server_default=ZERO)
    internal_overhead_cost: Mapped[int] = mapped_column(BigInteger, server_default=ZERO)
    internal_overhead_cost_default: Mapped[int] = mapped_column(BigInteger, server_default=ZERO)
    internal_overhead_cost_normalized: Mapped[int] = mapped_column(BigInteger, server_default=ZERO)
    facility_overhead_cost: Mapped[int] = mapped_column(BigInteger, server_default=ZERO)
    facility_overhead_cost_default: Mapped[int] = mapped_column(BigInteger, server_default=ZERO)
    facility_overhead_cost_normalized: Mapped[int] = mapped_column(BigInteger, server_default=ZERO)
    creator_id: Mapped[int | None] = mapped_column(BigInteger)
    updater_id: Mapped[int | None] = mapped_column(BigInteger)
    last_actor_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)
    updated_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)
    last_activity_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)


class ApprovalStatus(Base):
    __tablename__ = "approval_statuses"
    __table_args__ = (
        UniqueConstraint("time_entry_id", "approver_id"),
        CheckConstraint("status IN ('pending', 'approved')", name="status_known"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    time_entry_id: Mapped[int] = mapped_column(
        ForeignKey("time_entries.id", ondelete="CASCADE"), index=True
    )
    approver_id: Mapped[int] = mapped_column(ForeignKey("people.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), server_default=text("'pending'"))
    approved_at: Mapped[dt.datetime | None] = mapped_column()
    created_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(
            f"operation IN ({_sql_list(Operation)})",
            name="operation_known",
        ),
        CheckConstraint(
            f"status IN ({_sql_list(JobStatus)})",
            name="status_known",
        ),
        CheckConstraint("processed >= 0 AND processed <= total", name="processed_in_range"),
        Index(
            "uq_jobs_organization_id_idempotency_key",
            "organization_id",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
        Index("ix_jobs_organization_id_created_at", "organization_id", "created_at"),
        # The sweeper's scan: unfinished jobs only.
        Index(
            "ix_jobs_status_unfinished",
            "status",
            "created_at",
            postgresql_where=text(f"status IN ({_sql_list(UNFINISHED_STATUSES)})"),
        ),
        # The count of an organization's unfinished jobs, taken at every submission.
        Index(
            "ix_jobs_organization_id_unfinished",
            "organization_id",
            postgresql_where=text(f"status IN ({_sql_list(UNFINISHED_STATUSES)})"),
        ),
        # The retention purge's scan: finished jobs whose batch and result are still stored.
        Index(
            "ix_jobs_finished_at_unpurged",
            "finished_at",
            postgresql_where=text(f"purged_at IS NULL AND status IN ({_sql_list(ENDED_STATUSES)})"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")
    )
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"))
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id"))
    operation: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), server_default=text("'queued'"))
    # The bulk document's body as received and checked (JSON bytes), and the options. The
    # batch and the result can be megabytes each: loaded only where they are read.
    batch: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    options: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    total: Mapped[int] = mapped_column(Integer)
    # Its place in its organization's line when submitted: dispatch order across organizations.
    rank: Mapped[int] = mapped_column(SmallInteger, server_default=ZERO)
    processed: Mapped[int] = mapped_column(Integer, server_default=ZERO)
    attempts: Mapped[int] = mapped_column(Integer, server_default=ZERO)
    error_count: Mapped[int] = mapped_column(Integer, server_default=ZERO)
    # The internal error the last failed run met, and how many runs in a row met it.
    last_error: Mapped[str | None] = mapped_column(Text)
    error_streak: Mapped[int] = mapped_column(Integer, server_default=ZERO)
    # The final answer, encoded once: HTTP status and JSON:API body bytes (None for 204).
    result_status: Mapped[int | None] = mapped_column(Integer)
    result_body: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    created_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)
    started_at: Mapped[dt.datetime | None] = mapped_column()
    finished_at: Mapped[dt.datetime | None] = mapped_column()
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column()
    published_at: Mapped[dt.datetime | None] = mapped_column()
    # Set when retention dropped the batch and the result; the row keeps the job's summary.
    purged_at: Mapped[dt.datetime | None] = mapped_column()


class WebhookEvent(StrEnum):
    """What a webhook endpoint may hear of: a job of its organization that ended so."""

    SUCCEEDED = "job.succeeded"
    FAILED = "job.failed"
    CANCELED = "job.canceled"


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class Webhook(Base):
    """An organization's endpoint, told of its jobs as they end."""

    __tablename__ = "webhooks"
    __table_args__ = (
        CheckConstraint(
            f"cardinality(events) > 0 AND events <@ ARRAY[{_sql_list(WebhookEvent)}]::text[]",
            name="events_known",
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    organization_id: Mapped[int] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(ARRAY(Text))
    enabled: Mapped[bool] = mapped_column(Boolean, server_default=TRUE)
    # The signing key (whsec_...), kept as it is: a signature needs the key itself.
    secret: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)
    updated_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)


class WebhookDelivery(Base):
    """One event for one endpoint: the outbox row written with the job's end, then the state of
    its attempts. Its message id (webhook-id) and body stay the same on every attempt."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint(f"status IN ({_sql_list(DeliveryStatus)})", name="status_known"),
        Index("ix_webhook_deliveries_webhook_id_id", "webhook_id", "id"),
        # The sweeper's scan: deliveries still to be attempted.
        Index(
            "ix_webhook_deliveries_next_attempt_at_pending",
            "next_attempt_at",
            postgresql_where=text(f"status = '{DeliveryStatus.PENDING}'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    webhook_id: Mapped[int] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    event: Mapped[str] = mapped_column(String(32))
    message_id: Mapped[str] = mapped_column(String(64), unique=True)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(16), server_default=text("'pending'"))
    attempts: Mapped[int] = mapped_column(Integer, server_default=ZERO)
    last_response_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    # When the next attempt is due (pending only); the attempt that takes it moves it on
    # by the timeout first, so a duplicate message finds it not due and does nothing.
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column()
    # When a message for it last went to the broker: the sweeper re-sends only older ones.
    published_at: Mapped[dt.datetime | None] = mapped_column()
    delivered_at: Mapped[dt.datetime | None] = mapped_column()
    created_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)
