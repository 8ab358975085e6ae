"""Bulk writes through PostgreSQL's COPY: the fastest way rows get in, one stream per batch."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

PROGRESS_EVERY = 1000


def copy_rows(
    session: Session,
    table: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    progress: Callable[[int], None] | None = None,
    types: Sequence[str] | None = None,
) -> int:
    """COPY rows (tuples in `columns` order) into `table` on the session's connection.

    With `types` (the PostgreSQL type of each column) the rows go in binary: no text to
    format here and parse there.
    """
    driver = session.connection().connection.driver_connection
    assert driver is not None
    written = 0
    statement = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
    if types is not None:
        statement += " (FORMAT BINARY)"
    with driver.cursor() as cursor, cursor.copy(statement) as copy:
        if types is not None:
            copy.set_types(types)
        for row in rows:
            copy.write_row(row)
            written += 1
            if progress is not None and written % PROGRESS_EVERY == 0:
                progress(written)
    return written


def next_ids(session: Session, table: str, count: int) -> list[int]:
    """Reserve `count` ids from the table's sequence, in increasing order, in one query."""
    if count == 0:
        return []
    # One array, not `count` rows: a row each cost more to fetch than the sequence to advance.
    # The sequence is looked up once: called per row, the lookup cost five times the nextval.
    ids = session.connection().scalar(
        text(
            "WITH sequence AS MATERIALIZED"
            f" (SELECT pg_get_serial_sequence('{table}', 'id')::regclass AS id)"
            " SELECT array_agg(nextval(sequence.id)) FROM sequence, generate_series(1, :count)"
        ),
        {"count": count},
    )
    return sorted(ids)


def scratch_table(session: Session, name: str, like: str, columns: Sequence[str]) -> None:
    """A temporary table with some columns of `like`, dropped at the end of the transaction."""
    # A second batch in the same transaction (tests do this) replaces the first one's table.
    session.execute(text(f"DROP TABLE IF EXISTS {name}"))
    session.execute(
        text(
            f"CREATE TEMP TABLE {name} ON COMMIT DROP AS"
            f" SELECT id, {', '.join(columns)} FROM {like} WITH NO DATA"
        )
    )
