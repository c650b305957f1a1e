"""The HTTP proxy a ``hopgate client`` sends its outgoing traffic through.

Theory of operation
===================

A ``hopgate client`` often runs where every outgoing connection must pass a
corporate forward proxy (squid, deploy/README.md).  It finds that proxy the
way curl, pip and urllib do: ``http_proxy`` / ``https_proxy`` / ``no_proxy``
(lower case wins over upper case; ``HTTP_PROXY`` is ignored when
``REQUEST_METHOD`` is set, urllib's httpoxy guard), read **once** at start
(``ProxyTable.from_env``), logged once without credentials.

What goes through it: every request the client gateway makes, through its one
connection pool (``proxy_connector``): forwarded requests, the discovery
hello, the hop session's POST/GET long-polls and its WebSocket, and in
forward-proxy mode (no ``--upstream``) the requests of its own clients
(chained proxies).  ``ws://`` and ``http://`` pick ``http_proxy``,
``wss://`` and ``https://`` pick ``https_proxy``; a host matching
``no_proxy`` (urllib's reading: ``*``, host names and domain suffixes,
with or without ``:port``) is dialled directly,
and nothing else is exempt: list ``localhost,127.0.0.1`` yourself.

How it goes through:

* plain ``http://`` requests: absolute-form to the proxy (aiohttp's own
  proxy support, given the proxy per request by ``RoutingConnector``);
* ``https://`` and ``wss://``: ``CONNECT`` then TLS inside (aiohttp again);
* a plain-HTTP upgrade (the ``ws://`` hop, a forwarded WebSocket): a proxy
  forwarding in absolute-form drops ``Upgrade`` (squid answers for itself),
  so the gateway opens a ``CONNECT`` tunnel itself (``dial_through``) and
  sends the handshake inside it.  A proxy that refuses ``CONNECT`` to that
  port (squid allows 443 only by default) leaves the hop on long-poll, which
  works through any proxy; the WebSocket failure names the proxy's answer.

``hopgate server`` ignores these variables: its origin is next to it, and a
container image that sets ``http_proxy`` for everything must not send a
sidecar's origin traffic to the corporate proxy.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import aiohttp
from yarl import URL

from gateway.config import ConfigError
from gateway.transports.aiohttp_internals import RoutingConnector

__all__ = [
    "Proxy",
    "ProxyError",
    "ProxyRefused",
    "ProxyTable",
    "ProxyUnreachable",
    "dial_through",
    "open_connection",
    "proxy_connector",
]

log = logging.getLogger("hopgate.proxy")

#: Largest answer head to ``CONNECT`` we read (squid's is about 40 bytes).
_MAX_HEAD: Final = 16 * 1024
#: Which variable serves which URL scheme.
_SCHEME_VARIABLE: Final = {"http": "http", "ws": "http", "https": "https", "wss": "https"}


class ProxyError(aiohttp.ClientConnectionError):
    """A tunnel through the proxy could not be opened (the message names the proxy)."""


class ProxyUnreachable(ProxyError):
    """The proxy itself could not be reached."""


class ProxyRefused(ProxyError):
    """The proxy answered ``CONNECT`` with something other than ``200``."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Proxy:
    """One proxy: where it is, its credentials apart, and which variable named it."""

    url: URL
    #: ``Proxy-Authorization`` value from the URL's credentials (Basic), if any.
    authorization: str | None
    variable: str

    def __str__(self) -> str:
        """The proxy as a log line may show it: never its credentials."""
        return f"{self.url} ({self.variable})"


def _parse_proxy(variable: str, value: str) -> Proxy:
    """``http://[user:pass@]host[:port]``, or ``host:port`` (http:// assumed, as curl does)."""
    text = value.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        url = URL(text)
    except ValueError as exc:
        raise ConfigError(f"{variable}={value!r} is not a URL ({exc})") from None
    if url.scheme != "http" or not url.host:
        raise ConfigError(
            f"{variable}={url.with_user(None)!s}: hopgate client reaches proxies over plain "
            "http:// only (no https:// or socks proxies); point it at an http:// proxy or unset it"
        )
    authorization = None
    if url.user is not None:
        authorization = aiohttp.encode_basic_auth(url.user, url.password or "")
    return Proxy(url.with_user(None).with_path("").with_query(None), authorization, variable)


class ProxyTable:
    """Which proxy, if any, serves a URL: the environment as it was at start."""

    def __init__(self, proxies: Mapping[str, Proxy], no_proxy: str = "") -> None:
        self._proxies = dict(proxies)
        self._no_proxy = no_proxy
        self._bypass_all = no_proxy.strip() == "*"
        #: urllib's reading: blanks and leading dots dropped, compared lower case.
        self._bypass = tuple(
            name.strip().lstrip(".").lower() for name in no_proxy.split(",") if name.strip()
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ProxyTable:
        """The table the variables describe (urllib's reading of them); ConfigError if malformed."""
        environ = os.environ if environ is None else environ
        found = _environment_proxies(environ)
        proxies: dict[str, Proxy] = {
            scheme: _parse_proxy(*found[scheme]) for scheme in ("http", "https") if scheme in found
        }
        return cls(proxies, found["no"][1] if "no" in found else "")

    def __bool__(self) -> bool:
        return bool(self._proxies)

    def for_url(self, url: URL) -> Proxy | None:
        """The proxy requests to ``url`` go through, or None: direct (no proxy, or no_proxy)."""
        proxy = self._proxies.get(_SCHEME_VARIABLE.get(url.scheme, ""))
        if proxy is None or url.host is None:
            return None
        if self._bypassed(url.host.lower(), url.port):
            return None
        return proxy

    def _bypassed(self, host: str, port: int | None) -> bool:
        """``urllib.request.proxy_bypass_environment``: an entry is the host, ``host:port``,
        or a domain suffix of either."""
        if self._bypass_all:
            return True
        with_port = f"{host}:{port}"
        return any(
            host == name
            or with_port == name
            or host.endswith("." + name)
            or with_port.endswith("." + name)
            for name in self._bypass
        )

    def describe(self) -> str:
        """One line for the start-up log: each proxy and the exceptions, no credentials."""
        if not self._proxies:
            return "no proxy (http_proxy/https_proxy unset): connecting directly"
        parts = [f"{scheme}:// via {proxy}" for scheme, proxy in sorted(self._proxies.items())]
        if self._no_proxy:
            parts.append(f"direct for no_proxy={self._no_proxy}")
        return "; ".join(parts)


def _environment_proxies(environ: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """``urllib.request.getproxies_environment`` on any mapping: scheme -> (variable, value).

    Lower case wins over upper case, an empty lower-case value unsets, and
    ``HTTP_PROXY`` is ignored under CGI (``REQUEST_METHOD`` set: httpoxy).
    """
    found: dict[str, tuple[str, str]] = {}
    for name, value in environ.items():
        if value and name.lower().endswith("_proxy"):
            found[name.lower()[:-6]] = (name, value)
    if "REQUEST_METHOD" in environ:
        found.pop("http", None)
    for name, value in environ.items():
        if name.endswith("_proxy"):
            if value:
                found[name.lower()[:-6]] = (name, value)
            else:
                found.pop(name.lower()[:-6], None)
    return found


def proxy_connector(proxies: ProxyTable, **options: object) -> aiohttp.TCPConnector:
    """A TCPConnector (``options`` as for one) whose connections follow ``proxies``."""

    def proxy_for(url: URL, upgrade: bool) -> tuple[URL, dict[str, str]] | None:
        # A plain-HTTP upgrade is tunnelled by ``dial`` instead (see the module doc).
        if upgrade and url.scheme in ("http", "ws"):
            return None
        proxy = proxies.for_url(url)
        if proxy is None:
            return None
        auth = proxy.authorization
        return proxy.url, ({} if auth is None else {"Proxy-Authorization": auth})

    async def dial(url: URL, timeout: float | None) -> socket.socket | None:
        proxy = proxies.for_url(url)
        if proxy is None or url.host is None or url.port is None:
            return None
        sock, early = await dial_through(proxy, url.host, url.port, timeout)
        if early:  # an HTTP server says nothing before our request
            sock.close()
            raise ProxyRefused(f"proxy {proxy} sent bytes after its 200 to CONNECT", 200)
        return sock

    return RoutingConnector(proxy_for=proxy_for, dial=dial, **options)


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def dial_through(
    proxy: Proxy, host: str, port: int, timeout: float | None
) -> tuple[socket.socket, bytes]:
    """A socket tunnelled to ``host:port`` by ``CONNECT``, and any bytes that followed the 200.

    ``ProxyUnreachable`` when the proxy cannot be reached, ``ProxyRefused``
    when it does not answer ``200``; ``TimeoutError`` after ``timeout``.
    """
    target = _authority(host, port)
    try:
        async with asyncio.timeout(timeout):
            sock = await _connect(proxy)
            try:
                return sock, await _ask_tunnel(sock, proxy, target)
            except BaseException:
                sock.close()
                raise
    except TimeoutError:
        raise TimeoutError(f"proxy {proxy} did not open a tunnel to {target} in time") from None


async def _connect(proxy: Proxy) -> socket.socket:
    loop = asyncio.get_running_loop()
    host, port = proxy.url.host or "", proxy.url.port or 80
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ProxyUnreachable(f"cannot resolve proxy {proxy}: {exc}") from exc
    error: OSError = OSError(f"{host} has no address")
    for family, kind, proto, _name, address in infos:
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    raise ProxyUnreachable(f"cannot connect to proxy {proxy}: {error.strerror or error}")


async def _ask_tunnel(sock: socket.socket, proxy: Proxy, target: str) -> bytes:
    """Send ``CONNECT target``; the bytes after the answer's head once it is a 200."""
    loop = asyncio.get_running_loop()
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
    if proxy.authorization is not None:
        lines.append(f"Proxy-Authorization: {proxy.authorization}")
    await loop.sock_sendall(sock, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    received = b""
    while b"\r\n\r\n" not in received:
        if len(received) > _MAX_HEAD:
            raise ProxyRefused(f"proxy {proxy} sent an oversized answer to CONNECT {target}", 0)
        chunk = await loop.sock_recv(sock, 4096)
        if not chunk:
            raise ProxyRefused(f"proxy {proxy} closed the connection on CONNECT {target}", 0)
        received += chunk
    head, _, rest = received.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    if not (parts[0].startswith("HTTP/1.") and status == 200):
        raise ProxyRefused(f"proxy {proxy} refused CONNECT {target}: {status_line!r}", status)
    return rest


async def open_connection(
    proxies: ProxyTable | None, host: str, port: int, *, limit: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """``asyncio.open_connection(host, port)``, through ``https_proxy`` when it applies.

    For the forward proxy's ``CONNECT`` tunnels: a client asks for one to
    reach TLS (an ``https://`` origin), so ``https_proxy`` and ``no_proxy``
    decide.  ``ProxyError`` if the proxy cannot open it.
    """
    proxy = proxies.for_url(URL.build(scheme="https", host=host, port=port)) if proxies else None
    if proxy is None:
        return await asyncio.open_connection(host, port, limit=limit)
    sock, early = await dial_through(proxy, host, port, None)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    reader.feed_data(early)  # before the socket's own bytes: they come after
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    try:
        transport, _ = await loop.create_connection(lambda: protocol, sock=sock)
    except BaseException:
        sock.close()
        raise
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


def log_proxies(proxies: ProxyTable) -> None:
    """Say once, at start, where outgoing connections go."""
    log.info("= outgoing connections: %s", proxies.describe())
