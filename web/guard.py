"""What keeps other web sites out: any page the user visits can make the browser send requests here.

:func:`site_guard` wraps the whole app (every route, static files and 404s alike) and

* refuses a ``Host`` the server does not answer to (400): a DNS-rebinding page, served under its
  own name that it then points at 127.0.0.1, sends its own name. Allowed are :data:`LOCAL_HOSTS`,
  the address the connection came in on (``--host``), and the ``allowed_hosts`` setting;
* refuses a state-changing request (any method but GET, HEAD, OPTIONS) that a browser marks as
  coming from another origin (403): ``Sec-Fetch-Site`` other than ``same-origin`` or ``none``
  (``same-site`` is another port of localhost, another origin), or an ``Origin`` that is not the
  request's own. A request with neither header (curl, scripts) is no browser's and passes;
* adds :data:`SECURITY_HEADERS` to every response: a Content-Security-Policy allowing only this
  origin (no inline script or style; the templates have none), no framing, no sniffing, no Referer.

JSON bodies are taken only as ``application/json`` (:class:`web.bodies.BodyRequest`), so a
cross-site ``text/plain`` post, which a browser sends without asking, is no JSON either.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from litestar.types import ASGIApp, Message, Receive, Scope, Send

from engine.errors import InvalidArgument

LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Sec-Fetch-Site values of a request the user's own page (or the user, typing a URL) made.
OWN_SITE = frozenset({"same-origin", "none"})
DEFAULT_PORTS = {"http": "80", "https": "443"}
# img-src blob: lets the page show the image a user searches with (an object URL its own script
# made from the file); no other origin can create a blob: URL of this one.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    # Other sites may not embed thumbnails or read a JSON answer as a script or image either.
    (b"cross-origin-resource-policy", b"same-origin"),
)
_HOST = re.compile(r"(?P<host>\[[0-9a-f:.]+\]|[^\s:\[\]/@]+)(?::(?P<port>[0-9]{1,5}))?")


def split_host(value: str) -> tuple[str, str | None] | None:
    """``(host, port)`` of a ``Host`` header or an ``allowed_hosts`` entry, lower-cased, IPv6
    addresses in brackets; the port is None when absent; None for a malformed value."""
    m = _HOST.fullmatch(value.strip().lower())
    return (m["host"], m["port"]) if m else None


@dataclass(frozen=True)
class AllowedHosts:
    """The host names the server answers to besides the connection's own address: ``names`` on any
    port, ``pairs`` (name, port) on that port only, or any host at all (``anything``)."""

    names: frozenset[str]
    pairs: frozenset[tuple[str, str]]
    anything: bool

    @classmethod
    def parse(cls, text: str) -> AllowedHosts:
        """:data:`LOCAL_HOSTS` and the ``allowed_hosts`` setting: comma-separated ``name`` or
        ``name:port`` entries, or ``*`` for any host."""
        names, pairs, anything = set(LOCAL_HOSTS), set(), False
        for entry in filter(None, (e.strip() for e in text.split(","))):
            if entry == "*":
                anything = True
                continue
            split = split_host(entry)
            if split is None:
                raise InvalidArgument(
                    f"allowed_hosts: {entry!r} is not a host name, a host:port, an IPv4 address "
                    "or an IPv6 address in brackets ([::1]); separate several with commas"
                )
            host, port = split
            if port is None:
                names.add(host)
            else:
                pairs.add((host, port))
        return cls(frozenset(names), frozenset(pairs), anything)

    def allow(self, scope: Scope, host: str, port: str | None) -> bool:
        if self.anything or host in self.names or (host, port) in self.pairs:
            return True
        server = scope.get("server")  # the address this connection came in on
        if not server:
            return False
        address = str(server[0]).lower()
        # a socket bound to :: takes IPv4 connections too, at addresses such as ::ffff:192.0.2.1
        return host in (_bracketed(address), address.removeprefix("::ffff:"))


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _origin_key(scheme: str, host: str, port: str | None) -> tuple[str, str | None]:
    """An origin's host and port, a port equal to its scheme's default as none (``http://a:80`` is
    ``http://a``). Comparing these also lets a TLS proxy in front through: Origin ``https://name``,
    Host ``name``."""
    return host, None if port == DEFAULT_PORTS.get(scheme) else port


def _parse_origin(text: str) -> tuple[str, str, str | None] | None:
    """``(scheme, host, port)`` of an ``Origin`` header; None for ``null`` or anything malformed."""
    try:
        parts = urlsplit(text.strip().lower())
    except ValueError:  # an unclosed IPv6 bracket, say
        return None
    split = split_host(parts.netloc) if parts.scheme in DEFAULT_PORTS else None
    return (parts.scheme, *split) if split else None


def _foreign_host(scope: Scope, hosts: AllowedHosts, host: bytes | None) -> str | None:
    """Why the ``Host`` header ``host`` is refused, or None. No header (HTTP/1.0) is no browser's."""
    if host is None:
        return None
    text = host.decode("latin-1")
    split = split_host(text)
    if split is not None and hosts.allow(scope, *split):
        return None
    return (
        f"this server does not answer to the host name {text[:100]!r}; open it as http://127.0.0.1 or "
        "http://localhost (or its --host address), or start it with --set allowed_hosts=NAME to answer "
        "to NAME too"
    )


def _cross_origin(scope: Scope, headers: dict[bytes, bytes]) -> str | None:
    """Why a state-changing request is refused as another origin's, or None."""
    if scope.get("method", "GET").upper() in SAFE_METHODS:
        return None
    fetch_site = headers.get(b"sec-fetch-site", b"").decode("latin-1").lower()
    if fetch_site and fetch_site not in OWN_SITE:
        return (
            f"cross-origin request refused (Sec-Fetch-Site: {fetch_site[:40]}): only this server's own pages "
            "may send it; scripts and curl may too, without Origin and Sec-Fetch-Site"
        )
    origin = headers.get(b"origin")
    if origin is None:
        return None
    theirs = _parse_origin(origin.decode("latin-1"))
    own = split_host(headers.get(b"host", b"").decode("latin-1"))
    if (
        theirs is None
        or own is None
        or _origin_key(*theirs) != _origin_key(scope.get("scheme", "http"), *own)
    ):
        return (
            f"cross-origin request refused (Origin: {origin.decode('latin-1')[:100]}): only this server's own "
            "pages may send it; scripts and curl may too, without an Origin header"
        )
    return None


def site_guard(app: ASGIApp, hosts: AllowedHosts) -> ASGIApp:
    """ASGI middleware refusing hosts not in ``hosts`` (400) and cross-origin state-changing requests
    (403), and adding the security headers to every response."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # the app has no websocket routes
            await app(scope, receive, send)
            return

        async def guarded_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [
                    *message.get("headers", []),
                    *((k, v) for k, v in SECURITY_HEADERS if k not in present),
                ]
            await send(message)

        headers: dict[bytes, bytes] = {}
        for name, value in scope.get("headers", []):
            headers.setdefault(name.lower(), value)
        status, message = 400, _foreign_host(scope, hosts, headers.get(b"host"))
        if message is None:
            status, message = 403, _cross_origin(scope, headers)
        if message is None:
            await app(scope, receive, guarded_send)
            return
        body = json.dumps({"status_code": status, "detail": message}).encode()
        await guarded_send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return middleware
