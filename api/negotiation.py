"""Content negotiation for JSON:API with the bulk extension, and the Prefer header."""

from __future__ import annotations

from flask import Request

from shared.jsonapi.errors import MEDIA_TYPE, ApiError

BULK_CONTENT_TYPE = "application/vnd.api+json; ext=bulk"
MAX_WAIT = 60


def _media_ranges(header: str) -> list[tuple[str, dict[str, str]]]:
    ranges = []
    for part in header.split(","):
        pieces = [p.strip() for p in part.split(";")]
        if not pieces[0]:
            continue
        params: dict[str, str] = {}
        for piece in pieces[1:]:
            key, _, value = piece.partition("=")
            params[key.strip().lower()] = value.strip().strip('"')
        ranges.append((pieces[0].lower(), params))
    return ranges


def require_bulk_content_type(request: Request) -> None:
    header = request.headers.get("Content-Type", "")
    ranges = _media_ranges(header)
    if ranges:
        media, params = ranges[0]
        extensions = params.get("ext", "").split()
        if media == MEDIA_TYPE and "bulk" in extensions:
            return
    raise ApiError.one(
        415,
        "Unsupported media type",
        f"send the body as {BULK_CONTENT_TYPE!r}",
    )


def require_acceptable(request: Request) -> None:
    """406 unless Accept allows JSON:API (with or without ext=bulk) or anything."""
    header = request.headers.get("Accept")
    if header is None or not header.strip():
        return
    for media, params in _media_ranges(header):
        try:
            quality = float(params.get("q", "1"))
        except ValueError:
            quality = 0.0
        if quality > 0 and media in {"*/*", "application/*", MEDIA_TYPE}:
            return
    raise ApiError.one(
        406,
        "Not acceptable",
        f"this endpoint answers with {MEDIA_TYPE!r}; allow it in the Accept header",
    )


def preferred_wait(request: Request) -> int:
    """Seconds asked for with `Prefer: wait=N` (RFC 7240), at most MAX_WAIT; 0 when absent."""
    for header in request.headers.getlist("Prefer"):
        for preference in header.split(","):
            name, _, value = preference.strip().partition("=")
            if name.strip().lower() == "wait":
                value = value.strip().strip('"')
                if value.isdigit():
                    return min(int(value), MAX_WAIT)
    return 0
