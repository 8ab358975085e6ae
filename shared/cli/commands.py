"""`timebatch ...`: run the stack, migrate, load demo data, make tokens, submit batches.

Commands are units of work: each one commits what it did, once.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import click
import orjson
import psycopg
from sqlalchemy import Engine, select
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.orm import Session

from shared.cli.client import jobs_list, jobs_show, submit
from shared.cli.demo import demo_tokens, load_demo
from shared.devstack.embedded import embedded_settings
from shared.domain.tokens import create_token
from shared.jobs.queue import create_celery
from shared.jobs.retention import purge_expired
from shared.jobs.sweeper import recover_jobs
from shared.settings import Settings, SettingsError
from shared.store import migrate
from shared.store.engine import make_engine
from shared.store.models import Person


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc


NO_SCHEMA = "the database has no timebatch schema yet: run `timebatch db upgrade` first"


@contextmanager
def _database() -> Iterator[tuple[Settings, Engine]]:
    """Settings and an engine on the configured database, or on the embedded one of this data
    dir. A database that is missing, unreachable or not migrated is a message, not a
    traceback."""
    with embedded_settings(_settings()) as settings:
        engine = make_engine(settings)
        try:
            yield settings, engine
        except ProgrammingError as exc:
            if isinstance(exc.orig, psycopg.errors.UndefinedTable):
                raise click.ClickException(NO_SCHEMA) from None
            raise
        except OperationalError as exc:
            raise click.ClickException(f"cannot use the database: {exc.orig}") from None
        finally:
            engine.dispose()


@contextmanager
def _engine() -> Iterator[Engine]:
    with _database() as (_, engine):
        yield engine


@click.group()
def main() -> None:
    """timebatch: an asynchronous bulk API for time entries."""


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply pending migrations."""
    with _engine() as engine:
        migrate.upgrade(engine, revision)
    click.echo(f"database at {revision}")


@db.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Revert migrations down to REVISION (e.g. base)."""
    with _engine() as engine:
        migrate.downgrade(engine, revision)
    click.echo(f"database at {revision}")


@main.group()
def demo() -> None:
    """Demo data."""


def _load_demo(engine: Engine) -> None:
    with Session(engine, expire_on_commit=False) as session:
        created = load_demo(session)
        tokens = demo_tokens(session) if created else []
        session.commit()
    if not created:
        click.echo("demo data already loaded (use `timebatch token create` for a new token)")
        return
    click.echo("demo data loaded; one token per person (shown once):")
    for person, token in tokens:
        click.echo(
            f"  person {person.id} ({person.first_name} {person.last_name}), "
            f"organization {person.organization_id}: {token}"
        )


@demo.command("load")
def demo_load() -> None:
    """Create the demo organizations, people, services, tasks and entries (idempotent)."""
    with _engine() as engine:
        _load_demo(engine)


@main.group()
def token() -> None:
    """API tokens."""


@token.command("create")
@click.option("--person", "person_id", type=int, required=True, help="the person's id")
@click.option("--read-only", is_flag=True, help="a token that cannot write")
@click.option("--json", "as_json", is_flag=True, help="print one JSON line")
def token_create(person_id: int, read_only: bool, as_json: bool) -> None:
    """Create a personal token; it is printed once and stored only as a hash."""
    with _engine() as engine, Session(engine, expire_on_commit=False) as session:
        person = session.scalars(select(Person).where(Person.id == person_id)).one_or_none()
        if person is None:
            raise click.ClickException(f"person {person_id} does not exist")
        new_token = create_token(session, person, read_only=read_only)
        session.commit()
    if as_json:
        line = {
            "token": new_token,
            "person_id": str(person.id),
            "organization_id": str(person.organization_id),
        }
        click.echo(orjson.dumps(line).decode())
    else:
        click.echo(new_token)


@main.command("run")
def run() -> None:
    """Migrate, load demo data, and run web, worker, beat and Flower in the foreground."""
    from shared.devstack.supervisor import (
        run_stack,
        with_flower_auth,
        with_local_bind,
        with_metrics_dir,
    )

    base = _settings()
    made_up_flower_login = base.flower_basic_auth is None
    try:
        base = with_local_bind(with_metrics_dir(with_flower_auth(base, embedded=base.embedded)))
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc
    with embedded_settings(base) as settings:
        engine = make_engine(settings)
        try:
            migrate.upgrade(engine)
            if settings.demo:
                _load_demo(engine)
        finally:
            engine.dispose()
        if base.embedded:
            click.echo(f"embedded PostgreSQL and Redis under {settings.data_dir}")
        host = "127.0.0.1" if settings.bind in ("127.0.0.1", "0.0.0.0") else settings.bind
        click.echo(
            f"web on http://{host}:{settings.port} , Flower on http://{host}:{settings.flower_port}"
        )
        if made_up_flower_login:
            user, _, password = (settings.flower_basic_auth or "").partition(":")
            click.echo(f"Flower login (made up for this run): user {user}, password {password}")
        code = run_stack(settings)
    sys.exit(code)


@main.group()
def jobs() -> None:
    """Jobs."""


main.add_command(submit)
jobs.add_command(jobs_list)
jobs.add_command(jobs_show)


@jobs.command("recover")
def jobs_recover() -> None:
    """Re-publish jobs stuck in queued (never published, message lost) or running (worker died)."""
    with _database() as (settings, engine):
        count = recover_jobs(engine, settings, create_celery(settings))
    click.echo(f"re-published {count} job(s)")


@jobs.command("purge")
def jobs_purge() -> None:
    """Drop the batches and results of jobs finished more than TIMEBATCH_RETENTION_DAYS ago."""
    with _database() as (settings, engine):
        count = purge_expired(engine, settings)
    click.echo(f"purged {count} job(s) finished more than {settings.retention_days} days ago")
