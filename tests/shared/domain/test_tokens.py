from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.domain.tokens import create_token, find_principal, hash_token
from shared.store.models import ApiToken, Person


def test_tokens_are_stored_hashed(session: Session) -> None:
    token = create_token(session, session.get_one(Person, 7781), read_only=True)
    stored = session.scalars(select(ApiToken.token_hash)).all()
    assert token not in stored
    assert hash_token(token) in stored
    principal = find_principal(session, token)
    assert principal is not None
    assert (principal.person_id, principal.organization_id, principal.read_only) == (
        7781,
        2110,
        True,
    )
    assert find_principal(session, token + "x") is None
