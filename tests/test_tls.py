"""TLS on both sides: gateways listening with ``--tls-cert/--tls-key``, ``https://``
upstreams verified against the system CAs plus ``--ca-file``.  A throwaway
trustme CA signs a certificate for ``127.0.0.1`` and ``localhost``.
"""

from __future__ import annotations

import hashlib
import ssl
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from gateway.status import STATUS_PATH

if TYPE_CHECKING:
    from tests.conftest import MakeGateway, MakeOrigin, SpawnGateway, TLSFiles

pytestmark = pytest.mark.timeout(60)


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response(
        {
            "scheme": request.scheme,
            "path": request.raw_path,
            "sha256": hashlib.sha256(body).hexdigest(),
            "headers": [[k, v] for k, v in request.headers.items()],
        }
    )


def values(info: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in info["headers"] if k.lower() == name.lower()]


async def test_gateway_listens_with_tls(
    make_origin: MakeOrigin,
    make_gateway: MakeGateway,
    tls_files: TLSFiles,
    client_tls: ssl.SSLContext,
) -> None:
    gw = await make_gateway(
        "server",
        {
            "upstream": await make_origin(echo),
            "tls_cert": str(tls_files.cert),
            "tls_key": str(tls_files.key),
        },
    )
    assert gw.url.startswith("https://127.0.0.1:")
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{gw.url}/secure", data=b"over tls", ssl=client_tls) as resp:
            assert resp.status == 200
            info = await resp.json()
        async with session.get(gw.url + STATUS_PATH, ssl=client_tls) as resp:
            assert (await resp.json())["role"] == "server"
        # A client that does not trust our CA is refused at the handshake.
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await session.get(f"{gw.url}/secure", ssl=ssl.create_default_context())
    assert info["scheme"] == "http"  # the hop to the origin is plain
    assert info["sha256"] == hashlib.sha256(b"over tls").hexdigest()
    assert values(info, "X-Forwarded-Proto") == ["https"]


async def test_https_upstream_verified_with_ca_file(
    make_origin: MakeOrigin,
    make_gateway: MakeGateway,
    tls_files: TLSFiles,
    server_tls: ssl.SSLContext,
) -> None:
    origin = await make_origin(echo, ssl_context=server_tls)
    gw = await make_gateway("server", {"upstream": origin, "ca_file": str(tls_files.ca)})
    async with (
        aiohttp.ClientSession() as session,
        session.get(URL(f"{gw.url}/poll?x=%2F", encoded=True)) as resp,
    ):
        assert resp.status == 200
        info = await resp.json()
    assert info["scheme"] == "https"
    assert info["path"] == "/poll?x=%2F"


async def test_https_upstream_by_name_is_checked_against_the_name(
    make_origin: MakeOrigin,
    make_gateway: MakeGateway,
    tls_files: TLSFiles,
    server_tls: ssl.SSLContext,
) -> None:
    origin = await make_origin(echo, ssl_context=server_tls)
    by_name = origin.replace("127.0.0.1", "localhost")
    gw = await make_gateway("server", {"upstream": by_name, "ca_file": str(tls_files.ca)})
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{gw.url}/") as resp,
    ):
        assert resp.status == 200
        info = await resp.json()
    assert values(info, "Host") == [by_name.removeprefix("https://")]


async def test_https_upstream_without_the_ca_is_a_502_naming_the_certificate(
    make_origin: MakeOrigin, make_gateway: MakeGateway, server_tls: ssl.SSLContext
) -> None:
    hits = 0

    async def counted(request: web.Request) -> web.Response:
        nonlocal hits
        hits += 1
        return web.Response(text="should not be reached")

    origin = await make_origin(counted, ssl_context=server_tls)
    gw = await make_gateway("server", {"upstream": origin})
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{gw.url}/x") as resp,
    ):
        body = await resp.text()
        assert resp.status == 502
    assert f"TLS certificate of upstream {origin} failed verification" in body
    assert "CERTIFICATE_VERIFY_FAILED" in body or "certificate verify failed" in body
    assert hits == 0


async def test_tls_on_every_hop(
    make_origin: MakeOrigin,
    make_gateway: MakeGateway,
    tls_files: TLSFiles,
    server_tls: ssl.SSLContext,
    client_tls: ssl.SSLContext,
) -> None:
    """client -TLS-> client gateway -TLS-> server gateway -TLS-> origin."""
    tls = {"tls_cert": str(tls_files.cert), "tls_key": str(tls_files.key)}
    origin = await make_origin(echo, ssl_context=server_tls)
    server = await make_gateway("server", {"upstream": origin, "ca_file": str(tls_files.ca), **tls})
    entry = await make_gateway(
        "client", {"upstream": server.url, "ca_file": str(tls_files.ca), **tls}
    )
    payload = bytes(range(256)) * 4096  # 1 MiB
    async with (
        aiohttp.ClientSession() as session,
        session.put(f"{entry.url}/blob", data=payload, ssl=client_tls) as resp,
    ):
        assert resp.status == 200
        info = await resp.json()
        via = resp.headers["Via"]
    assert info["scheme"] == "https"
    assert info["sha256"] == hashlib.sha256(payload).hexdigest()
    assert values(info, "X-Forwarded-Proto") == ["https"]
    assert values(info, "Via") == ["1.1 hopgate, 1.1 hopgate"]
    assert via == "1.1 hopgate, 1.1 hopgate"


async def test_subprocess_gateway_with_tls_flags(
    make_origin: MakeOrigin,
    spawn_gateway: SpawnGateway,
    tls_files: TLSFiles,
    server_tls: ssl.SSLContext,
    client_tls: ssl.SSLContext,
) -> None:
    origin = await make_origin(echo, ssl_context=server_tls)
    gw = spawn_gateway(
        "server",
        "--upstream", origin,
        "--tls-cert", str(tls_files.cert),
        "--tls-key", str(tls_files.key),
        "--ca-file", str(tls_files.ca),
    )  # fmt: skip
    assert gw.url.startswith("https://127.0.0.1:")
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{gw.url}/sub", ssl=client_tls) as resp,
    ):
        assert resp.status == 200
        info = await resp.json()
    assert info["scheme"] == "https"
    assert values(info, "X-Forwarded-Proto") == ["https"]
