"""Loading the TLS files and binding the listener, with errors that name what to fix.

OpenSSL says "[SSL] PEM lib (_ssl.c:3905)" for a certificate given as the
key, a key given as the certificate and a file that is not PEM alike, and a
failed ``getaddrinfo`` reads like a busy port.  These helpers look at the
files (or the error) once it failed and say which file or host is wrong and
what to check.  ``gateway.config_sources`` runs the TLS checks before
anything starts (exit status 2); the ``Gateway`` loads its context here too,
so an in-process gateway fails the same way.
"""

from __future__ import annotations

import errno
import socket
import ssl
from pathlib import Path

from gateway.config_values import ConfigError

__all__ = ["check_ca_file", "listen_error", "server_tls_context"]

CERT_MARK = "-----BEGIN CERTIFICATE-----"
KEY_MARK = "PRIVATE KEY-----"


class _EncryptedKey(Exception):
    """OpenSSL asked for a pass phrase: the key file is encrypted."""


def _no_pass_phrase() -> str:
    # Without a callback OpenSSL would prompt on the terminal of a daemon.
    raise _EncryptedKey


def server_tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The listener's TLS context from ``--tls-cert`` and ``--tls-key``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(cert), str(key), password=_no_pass_phrase)
    except _EncryptedKey:
        raise _file_error(
            "tls_key",
            key,
            "holds an encrypted private key and hopgate takes no pass phrase: write an "
            f"unencrypted copy (openssl pkey -in {key} -out plain.key) readable only by the "
            "gateway's user",
        ) from None
    except ssl.SSLError as exc:
        raise _diagnose(cert, key, exc) from None
    except OSError as exc:
        failed = Path(exc.filename) if exc.filename else cert
        name = "tls_key" if failed == key else "tls_cert"
        raise _file_error(name, failed, f"cannot read it: {exc.strerror or exc}") from None
    return context


def check_ca_file(path: Path) -> None:
    """``--ca-file`` holds PEM certificates ``ssl`` can load."""
    try:
        ssl.create_default_context().load_verify_locations(cafile=str(path))
    except ssl.SSLError as exc:
        holds = _holds(path)
        reason = f"holds no PEM certificate ({CERT_MARK}...; convert a DER file with openssl x509)"
        if holds == "key":
            reason = "holds a private key, not CA certificates"
        raise _file_error("ca_file", path, f"{reason} [{exc.reason or exc}]") from None
    except OSError as exc:
        raise _file_error("ca_file", path, f"cannot read it: {exc.strerror or exc}") from None


def _holds(path: Path) -> str:
    """``cert``, ``key``, ``both`` or ``other``: what PEM blocks the file holds."""
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return "other"
    cert, key = CERT_MARK in text, KEY_MARK in text
    return "both" if cert and key else "cert" if cert else "key" if key else "other"


def _diagnose(cert: Path, key: Path, exc: ssl.SSLError) -> ConfigError:
    """Which of the two files OpenSSL refused, and what to check."""
    in_cert, in_key = _holds(cert), _holds(key)
    if in_cert == "key" and in_key == "cert":
        return ConfigError(
            f"--tls-cert {cert} holds a private key and --tls-key {key} a certificate: "
            "the two are swapped; give the certificate chain to --tls-cert and the key "
            "to --tls-key"
        )
    if in_cert == "key":
        return _file_error("tls_cert", cert, "holds a private key, not a certificate chain")
    if in_cert == "other":
        return _file_error(
            "tls_cert",
            cert,
            f"is not a PEM certificate chain (no {CERT_MARK} line; convert "
            "a DER file with openssl x509 -inform der -in FILE -out cert.pem)",
        )
    if in_key == "cert":
        return _file_error("tls_key", key, "holds a certificate, not the private key")
    if in_key == "other":
        return _file_error(
            "tls_key",
            key,
            "is not a PEM private key (no '-----BEGIN ... PRIVATE KEY-----' "
            "line; convert a DER key with openssl pkey -inform der -in FILE -out key.pem)",
        )
    if exc.reason == "KEY_VALUES_MISMATCH":
        return ConfigError(
            f"--tls-key {key} is not the key of the certificate in --tls-cert {cert}: "
            "check that both files come from the same certificate request"
        )
    return ConfigError(
        f"--tls-cert {cert} / --tls-key {key}: OpenSSL could not load them ({exc}); "
        "check that both are PEM, the certificate first in its file"
    )


def _file_error(name: str, path: Path, reason: str) -> ConfigError:
    reason = f"{path} {reason}"
    return ConfigError(f"--{name.replace('_', '-')} {reason}", name=name, reason=reason)


def listen_error(host: str, port: int, exc: OSError) -> OSError:
    """``exc`` from binding ``host:port`` as a sentence that says what to change."""
    if isinstance(exc, socket.gaierror):
        hint = (
            f"the host {host!r} could not be resolved ({exc.strerror}); give an IP address "
            "(127.0.0.1, 0.0.0.0, [::]) or a name this machine resolves"
        )
    elif exc.errno == errno.EADDRINUSE:
        hint = f"{exc.strerror}: something else listens there; pick another --listen port"
    elif exc.errno == errno.EADDRNOTAVAIL:
        hint = f"{exc.strerror}: {host} is not an address of this machine"
    elif exc.errno == errno.EACCES:
        hint = f"{exc.strerror}: ports below 1024 need privileges; pick a port above 1023"
    else:
        hint = f"{exc.strerror or exc}"
    return OSError(exc.errno, f"cannot listen on {host}:{port}: {hint}")
