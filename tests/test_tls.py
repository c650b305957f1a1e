"""TLS on both sides: gateways listening with ``--tls-cert/--tls-key``, ``https://``
upstreams verified against the system CAs plus ``--ca-file``.  A throwaway
trustme CA signs a certificate for ``127.0.0.1`` and ``localhost``.  A TLS
file given by mistake (swapped, not PEM, encrypted, another certificate's
key) is named, with what to check, instead of OpenSSL's "PEM lib".
"""

from __future__ import annotations

import hashlib
import ssl
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from yarl import URL

from gateway.config import ConfigError, build_config
from gateway.config_sources import load_config
from gateway.server import Gateway
from gateway.status import STATUS_PATH
from tests.processes import gateway_command

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
    make_origin: MakeOrigin,
    make_gateway: MakeGateway,
    server_tls: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
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
    # A sidecar's clients are told what failed, not where; its log says both.
    assert "the upstream's TLS certificate failed verification" in body
    assert origin.rpartition(":")[2] not in body
    assert f"TLS certificate of upstream {origin} failed verification" in caplog.text
    assert "certificate verify failed" in caplog.text
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


# ------------------------------------------- TLS files that fail name themselves


@pytest.fixture(scope="module")
def bad_tls_files(
    tls_ca: trustme.CA, tls_files: TLSFiles, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Files a user may give by mistake, by what they hold."""
    directory = tmp_path_factory.mktemp("bad-tls")
    files = {
        "cert": tls_files.cert,
        "key": tls_files.key,
        "ca": tls_files.ca,
        "other-key": directory / "other-key.pem",
        "encrypted-key": directory / "encrypted-key.pem",
        "der-cert": directory / "cert.der",
        "text": directory / "notes.txt",
    }
    tls_ca.issue_cert("other.example").private_key_pem.write_to_path(str(files["other-key"]))
    key = serialization.load_pem_private_key(tls_files.key.read_bytes(), password=None)
    files["encrypted-key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pass phrase"),
        )
    )
    files["der-cert"].write_bytes(ssl.PEM_cert_to_DER_cert(tls_files.cert.read_text()))
    files["text"].write_text("not a certificate\n")
    return files


TLS_MISTAKES = [
    (
        "key",
        "cert",
        "--tls-cert {key} holds a private key and --tls-key {cert} a certificate: "
        "the two are swapped",
    ),
    ("key", "key", "--tls-cert {key} holds a private key, not a certificate chain"),
    ("cert", "cert", "--tls-key {cert} holds a certificate, not the private key"),
    ("der-cert", "key", "--tls-cert {der-cert} is not a PEM certificate chain"),
    ("text", "key", "--tls-cert {text} is not a PEM certificate chain"),
    ("cert", "text", "--tls-key {text} is not a PEM private key"),
    (
        "cert",
        "other-key",
        "--tls-key {other-key} is not the key of the certificate in --tls-cert {cert}",
    ),
    (
        "cert",
        "encrypted-key",
        "--tls-key {encrypted-key} holds an encrypted private key and hopgate takes no pass phrase",
    ),
]


@pytest.mark.parametrize(("cert", "key", "message"), TLS_MISTAKES, ids=lambda v: str(v)[:20])
def test_a_tls_file_that_fails_is_named_with_what_to_check(
    bad_tls_files: dict[str, Path], cert: str, key: str, message: str
) -> None:
    settings = {"tls_cert": bad_tls_files[cert], "tls_key": bad_tls_files[key]}
    with pytest.raises(ConfigError) as info:
        load_config("server", {"upstream": "http://127.0.0.1:9", **settings}, {})
    assert str(info.value).startswith(message.format_map(bad_tls_files))
    assert "PEM lib" not in str(info.value)


def test_a_tls_file_from_the_environment_names_the_variable(
    bad_tls_files: dict[str, Path],
) -> None:
    environ = {
        "HOPGATE_UPSTREAM": "http://127.0.0.1:9",
        "HOPGATE_TLS_CERT": str(bad_tls_files["cert"]),
        "HOPGATE_TLS_KEY": str(bad_tls_files["text"]),
    }
    with pytest.raises(ConfigError) as info:
        load_config("server", {}, environ)
    text = bad_tls_files["text"]
    assert str(info.value).startswith(f"HOPGATE_TLS_KEY='{text}': {text} is not a PEM private key")


def test_a_ca_file_that_is_not_certificates_is_named(bad_tls_files: dict[str, Path]) -> None:
    key = bad_tls_files["key"]
    with pytest.raises(ConfigError, match=f"^--ca-file {key} holds a private key, not CA"):
        load_config("server", {"upstream": "http://127.0.0.1:9", "ca_file": key}, {})


async def test_an_in_process_gateway_names_the_swapped_files(
    bad_tls_files: dict[str, Path],
) -> None:
    swapped = {"tls_cert": str(bad_tls_files["key"]), "tls_key": str(bad_tls_files["cert"])}
    gateway = Gateway(
        build_config("server", {"upstream": "http://127.0.0.1:9", "listen": ":0", **swapped})
    )
    try:
        with pytest.raises(ConfigError, match="the two are swapped"):
            await gateway.start()
    finally:
        await gateway.stop()


def test_swapped_files_stop_a_real_process_with_exit_2(bad_tls_files: dict[str, Path]) -> None:
    key, cert = bad_tls_files["key"], bad_tls_files["cert"]
    done = subprocess.run(
        gateway_command(
            "server", "--upstream", "http://127.0.0.1:9", "--listen", "127.0.0.1:0",
            "--tls-cert", str(key), "--tls-key", str(cert),
        ),
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    assert done.returncode == 2
    assert (
        f"hopgate server: error: --tls-cert {key} holds a private key and --tls-key {cert} a "
        "certificate: the two are swapped; give the certificate chain to --tls-cert and the "
        "key to --tls-key\n"
    ) in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
