"""Personal API tokens: shown once, stored as a SHA-256 hash."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from shared.store.models import ApiToken, Person

TOKEN_PREFIX = "tb_"


def hash_token(token: str) -> str:
    # Tokens are 256 random bits, so an unsalted fast hash is enough to make a leaked table useless.
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(session: Session, person: Person, *, read_only: bool = False) -> str:
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(
        ApiToken(
            token_hash=hash_token(token),
            person_id=person.id,
            organization_id=person.organization_id,
            read_only=read_only,
        )
    )
    session.flush()
    return token


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's person, their organization and whether they may write."""

    person_id: int
    organization_id: int
    read_only: bool


# Built once: on every request, building it would cost about as much as running it.
_PRINCIPAL = select(ApiToken.person_id, ApiToken.organization_id, ApiToken.read_only).where(
    ApiToken.token_hash == bindparam("token_hash")
)


def find_principal(session: Session, token: str) -> Principal | None:
    row = session.execute(_PRINCIPAL, {"token_hash": hash_token(token)}).first()
    if row is None:
        return None
    return Principal(
        person_id=row.person_id, organization_id=row.organization_id, read_only=row.read_only
    )
