"""The job views' own helpers."""

from __future__ import annotations

import gzip
import os

from api.views.jobs import GUNZIP_PIECE, gunzipped


def test_a_stored_body_is_decompressed_piece_by_piece() -> None:
    # Random halves do not compress: the body is larger than a piece, compressed or not.
    text = (os.urandom(GUNZIP_PIECE).hex() + "x" * GUNZIP_PIECE * 3).encode()
    pieces = list(gunzipped(gzip.compress(text, compresslevel=1)))
    assert len(pieces) > 4
    assert max(map(len, pieces)) <= GUNZIP_PIECE
    assert b"".join(pieces) == text
