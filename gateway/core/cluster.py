"""Session ids that name their owning instance, and the proof an internal request carries.

Theory of operation
===================

Several ``hopgate server`` instances behind a load balancer without affinity
form a cluster by sharing a secret. A hop session lives in the instance that
created it; any other instance that receives one of its requests must pass it
to that owner. No shared store says who owns what: the id says it, in the
spirit of QUIC-LB's routable connection ids::

    <owner>.<nonce>.<mac>

    owner  base64url (no padding) of the owner's advertised URL, normalised
           to scheme://host:port (utf-8)
    nonce  16 random bytes, base64url (22 characters; gateway.core.session.tokens)
    mac    base64url of the first 16 bytes of
           HMAC-SHA256(cluster secret, owner + "." + nonce)   (22 characters)

The owner part is readable by anyone (a load balancer routes on it, see
docs/howto/cluster.md); the MAC is what makes it trustworthy. Without the
secret nobody can mint an id naming an address of their choosing, so an
instance never opens a connection to an address a peer picked: an id whose
MAC does not verify, whose owner does not decode to an http(s) URL in its
normal form, or that was made with another cluster's secret is *forged*, is
answered 404 like an unknown session, and goes nowhere. The MAC is compared
in constant time and checked before the owner is decoded.

An instance that forwards a request marks it with ``X-Hopgate-Cluster`` (see
:meth:`ClusterIds.internal_proof`): a MAC over the time, the real peer's address and the
request line. The owner serves such a request itself and never forwards it
again (no loops); a header that does not verify is treated as absent.

This module is pure: the caller passes ``now`` and the nonce.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass
from typing import Final, Literal

from yarl import URL

__all__ = [
    "CLUSTER_HEADER",
    "MAX_OWNER_CHARS",
    "MIN_SECRET_BYTES",
    "NONCE_CHARS",
    "PROOF_WINDOW",
    "ClusterIds",
    "Verdict",
    "encode_owner",
    "normal_owner",
    "short_id",
]

#: Marks a request one instance passed to another (its value: ``internal_proof``).
CLUSTER_HEADER: Final = "X-Hopgate-Cluster"
#: A shorter cluster secret is refused at startup.
MIN_SECRET_BYTES: Final = 16
#: Seconds an internal proof stays valid either side of the owner's clock.
PROOF_WINDOW: Final = 60
NONCE_CHARS: Final = 22
MAC_CHARS: Final = 22
#: Session ids are at most 128 characters (core.session.frames), the rest is owner.
MAX_OWNER_CHARS: Final = 128 - NONCE_CHARS - MAC_CHARS - 2
_MAC_BYTES: Final = 16
_B64URL: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_ID_CHARS: Final = _B64URL | {"."}
#: Owners decoded once remembered (MAC-verified only, so only the secret can add one).
_MAX_KNOWN_OWNERS: Final = 256

Kind = Literal["plain", "local", "remote", "forged"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a session id says about its owner.

    ``plain``: not a cluster id (serve it here, as without a cluster);
    ``local``: ours; ``remote``: owned by ``owner`` (a normalised URL);
    ``forged``: refused, ``reason`` says why (for the log, never for the peer).
    """

    kind: Kind
    owner: str = ""
    reason: str = ""


def normal_owner(url: str) -> str:
    """``url`` as ``scheme://host:port``, or ValueError saying what is wrong with it.

    One spelling per instance, so the owner part of every id it makes is the
    same string (a load balancer matches it as a prefix).
    """
    try:
        parsed = URL(url.strip())
        port = parsed.port
    except (ValueError, TypeError, UnicodeError):
        raise ValueError("not a URL") from None
    if parsed.scheme not in ("http", "https") or not parsed.host or port is None:
        raise ValueError("give an http:// or https:// URL with a host, e.g. http://10.0.0.5:8080")
    if parsed.user is not None or parsed.password is not None:
        raise ValueError("must not carry a user name or password")
    if parsed.path not in ("", "/") or parsed.query_string or parsed.fragment:
        raise ValueError("must be scheme://host:port only, with no path, query or fragment")
    host = parsed.host
    if ":" in host:
        host = f"[{host}]"
    return f"{parsed.scheme}://{host.lower()}:{port}"


def encode_owner(owner: str) -> str:
    """The owner part of a session id: base64url of the normalised URL, no padding."""
    return base64.urlsafe_b64encode(owner.encode("utf-8")).rstrip(b"=").decode("ascii")


def short_id(session_id: str) -> str:
    """The first characters of what tells ``session_id`` apart, for status and logs.

    Every id of a cluster starts with the same owner part (``aHR0cD`` is
    base64 of ``http:/``): its nonce is what differs. Never the whole id,
    which is a credential.
    """
    parts = session_id.split(".")
    return (parts[1] if len(parts) == 3 else session_id)[:6]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _decode_owner(text: str) -> str | None:
    """The URL an owner part names, if it decodes to one in normal form; else None."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        url = raw.decode("utf-8")
        normal = normal_owner(url)
    except (binascii.Error, ValueError):
        return None
    return url if normal == url else None


class ClusterIds:
    """Mints and judges the session ids of one instance of a cluster."""

    __slots__ = ("_key", "_owners", "advertise", "owner_part")

    def __init__(self, secret: str, advertise: str) -> None:
        key = secret.encode("utf-8")
        if len(key) < MIN_SECRET_BYTES:
            raise ValueError(f"the cluster secret must be at least {MIN_SECRET_BYTES} bytes")
        self._key = key
        self.advertise = normal_owner(advertise)
        self.owner_part = encode_owner(self.advertise)
        self._owners: dict[str, str] = {}
        if len(self.owner_part) > MAX_OWNER_CHARS:
            raise ValueError(
                f"{self.advertise} is too long to fit in a session id: at most "
                f"{MAX_OWNER_CHARS * 3 // 4} characters as scheme://host:port "
                "(use an IP address or a shorter name)"
            )

    def _mac(self, owner_part: str, nonce: str) -> str:
        message = f"{owner_part}.{nonce}".encode("ascii")
        return _b64(hmac.digest(self._key, message, "sha256")[:_MAC_BYTES])

    def session_id(self, nonce: str) -> str:
        """The id of a new session of this instance; ``nonce`` is 22 base64url characters."""
        if len(nonce) != NONCE_CHARS or not set(nonce) <= _B64URL:
            raise ValueError("the nonce must be 16 random bytes in base64url (22 characters)")
        return f"{self.owner_part}.{nonce}.{self._mac(self.owner_part, nonce)}"

    def judge(self, session_id: str) -> Verdict:
        """Who owns ``session_id``; never raises, whatever the peer sent."""
        if "." not in session_id:
            return Verdict("plain")
        parts = session_id.split(".")
        if len(parts) != 3:
            return Verdict("forged", reason="not owner.nonce.mac")
        owner_part, nonce, mac = parts
        if not (
            0 < len(owner_part) <= MAX_OWNER_CHARS
            and len(nonce) == NONCE_CHARS
            and len(mac) == MAC_CHARS
            and set(session_id) <= _ID_CHARS
        ):
            return Verdict("forged", reason="malformed cluster session id")
        if not hmac.compare_digest(mac.encode("ascii"), self._mac(owner_part, nonce).encode()):
            return Verdict("forged", reason="its MAC does not verify (forged or another cluster's)")
        if owner_part == self.owner_part:
            return Verdict("local", owner=self.advertise)
        owner = self._owners.get(owner_part) or _decode_owner(owner_part)
        if owner is None:
            return Verdict("forged", reason="its owner is not an http(s) URL in normal form")
        if len(self._owners) < _MAX_KNOWN_OWNERS:
            self._owners[owner_part] = owner
        return Verdict("remote", owner=owner)

    # -- the internal proof ----------------------------------------------------------

    def _proof_mac(self, stamp: int, peer: str, method: str, path: str) -> str:
        message = f"hopgate.cluster v1 {stamp} {peer} {method} {path}".encode("utf-8", "replace")
        return hmac.digest(self._key, message, "sha256").hex()

    def internal_proof(self, now: float, peer: str, method: str, path: str) -> str:
        """``X-Hopgate-Cluster`` for a request passed on: ``v1 <time> <peer> <hex mac>``.

        ``peer`` is the address the request came from (no spaces); ``path``
        the request's path, so a captured proof does not fit another session.
        """
        stamp = int(now)
        peer = peer.replace(" ", "") or "-"
        return f"v1 {stamp} {peer} {self._proof_mac(stamp, peer, method, path)}"

    def check_proof(self, value: str, now: float, method: str, path: str) -> str | None:
        """The real peer's address if ``value`` is a valid proof for this request, else None."""
        parts = value.split(" ")
        if len(parts) != 4 or parts[0] != "v1" or not parts[1].isascii():
            return None
        if not parts[1].isdigit() or len(parts[1]) > 20:
            return None
        stamp, peer, mac = int(parts[1]), parts[2], parts[3]
        expected = self._proof_mac(stamp, peer, method, path)
        if not hmac.compare_digest(mac.encode("utf-8", "replace"), expected.encode()):
            return None
        return peer if abs(now - stamp) <= PROOF_WINDOW else None
