"""Which URLs a webhook may target: no loopback, private, link-local, multicast or cloud
metadata address, unless the settings allow private targets (development and tests).

The check runs at registration here and again at every delivery, where requests-hardened
connects to the very address it checked (shared/webhooks/delivery.py): a name that resolves
to a public address at registration and to a private one later (DNS rebinding) is refused
then too. Both use the same library's rules.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import requests
from requests_hardened.ip_filter import get_ip_address

MAX_URL_LENGTH = 2048


class TargetRefused(ValueError):
    """The URL is not one timebatch will send to; the message says why."""


def check_url(url: str, *, allow_private: bool) -> None:
    """Raise TargetRefused unless `url` is an absolute http(s) URL whose host resolves to
    addresses a webhook may reach."""
    if len(url) > MAX_URL_LENGTH:
        raise TargetRefused(f"the URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TargetRefused(f"the URL is not valid: {exc}") from None
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes:
        raise TargetRefused(f"the URL must start with {' or '.join(s + '://' for s in schemes)}")
    if not parts.hostname:
        raise TargetRefused("the URL names no host")
    if parts.username is not None or parts.password is not None:
        raise TargetRefused("the URL must not carry credentials")
    if allow_private:
        return
    default_port = 443 if parts.scheme == "https" else 80
    try:
        addresses = socket.getaddrinfo(
            parts.hostname, port or default_port, type=socket.SOCK_STREAM
        )
    except (socket.gaierror, UnicodeError):
        raise TargetRefused(f"the host {parts.hostname} does not resolve") from None
    # Every address the name has, not only the first a delivery would try.
    for *_, sockaddr in addresses:
        try:
            get_ip_address(str(sockaddr[0]), int(sockaddr[1]), allow_loopback=False)
        except requests.RequestException:
            raise TargetRefused(
                f"the host {parts.hostname} resolves to {sockaddr[0]}, a loopback, private,"
                " link-local, multicast or otherwise internal address"
            ) from None
