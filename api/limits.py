"""How long a request line and a header may be, answered as JSON:API (414, 431).

gunicorn's own limits are lifted (api/gunicorn_config.py), since it would answer with an
HTML page; these are the limits it had, enforced here so the client gets an error document.
"""

from __future__ import annotations

from flask import request
from werkzeug.exceptions import RequestHeaderFieldsTooLarge, RequestURITooLarge

# gunicorn's defaults for the request line and for one header field.
MAX_REQUEST_TARGET = 8190
MAX_HEADER_FIELD = 8190


def refuse_oversized() -> None:
    target = request.environ.get("RAW_URI") or request.full_path
    if len(target) > MAX_REQUEST_TARGET:
        raise RequestURITooLarge(f"the request target is longer than {MAX_REQUEST_TARGET} bytes")
    for name, value in request.headers.items():
        if len(name) + len(value) + 2 > MAX_HEADER_FIELD:
            raise RequestHeaderFieldsTooLarge(
                f"the {name} header is longer than {MAX_HEADER_FIELD} bytes"
            )
