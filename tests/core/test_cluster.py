"""``gateway.core.cluster``: ids that name their owner, verified without an event loop."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.cluster import (
    MAX_OWNER_CHARS,
    ClusterIds,
    encode_owner,
    normal_owner,
    short_id,
)
from gateway.core.session.frames import MAX_SESSION_ID_LENGTH
from gateway.core.session.tokens import new_session_id

SECRET = "0123456789abcdef-cluster-secret"
ONE = ClusterIds(SECRET, "http://10.0.0.1:8080")
TWO = ClusterIds(SECRET, "http://10.0.0.2:8080")
NONCE = "AAAAAAAAAAAAAAAAAAAAAA"


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_an_id_is_owner_nonce_mac_as_documented() -> None:
    session_id = ONE.session_id(NONCE)
    owner, nonce, mac = session_id.split(".")
    assert base64.urlsafe_b64decode(owner + "=" * (-len(owner) % 4)) == b"http://10.0.0.1:8080"
    assert nonce == NONCE
    digest = hmac.new(SECRET.encode(), f"{owner}.{nonce}".encode(), hashlib.sha256).digest()
    assert mac == b64(digest[:16])
    assert len(mac) == 22


def test_round_trip_local_and_remote() -> None:
    mine = ONE.session_id(new_session_id())
    assert ONE.judge(mine).kind == "local"
    verdict = TWO.judge(mine)
    assert (verdict.kind, verdict.owner) == ("remote", "http://10.0.0.1:8080")


def test_ids_without_dots_are_plain() -> None:
    assert ONE.judge(new_session_id()).kind == "plain"


def test_a_forged_mac_is_refused() -> None:
    owner, nonce, mac = ONE.session_id(NONCE).split(".")
    flipped = ("B" if mac[0] == "A" else "A") + mac[1:]
    assert TWO.judge(f"{owner}.{nonce}.{flipped}").kind == "forged"
    # An attacker's own owner with a made-up MAC: refused before it is decoded.
    evil = encode_owner("http://169.254.169.254:80")
    assert TWO.judge(f"{evil}.{nonce}.{mac}").kind == "forged"


def test_another_clusters_secret_is_refused() -> None:
    foreign = ClusterIds("another cluster's secret, 32 b", "http://10.0.0.1:8080")
    verdict = TWO.judge(foreign.session_id(NONCE))
    assert verdict.kind == "forged"
    assert "MAC" in verdict.reason


def mac_for(owner_part: str, nonce: str) -> str:
    digest = hmac.new(SECRET.encode(), f"{owner_part}.{nonce}".encode(), hashlib.sha256).digest()
    return b64(digest[:16])


@pytest.mark.parametrize(
    "owner",
    [
        b"ftp://10.0.0.1:21",
        b"http://10.0.0.1:8080/path",
        b"http://10.0.0.1",  # not normal form: the port is always spelled out
        b"HTTP://10.0.0.1:8080",
        b"http://user@10.0.0.1:8080",
        b"not a url",
        b"\xff\xfe",
    ],
)
def test_a_bad_owner_is_refused_even_with_a_valid_mac(owner: bytes) -> None:
    """Only a holder of the secret could mint these; still, they go nowhere."""
    owner_part = b64(owner)
    session_id = f"{owner_part}.{NONCE}.{mac_for(owner_part, NONCE)}"
    verdict = ONE.judge(session_id)
    assert verdict.kind == "forged", verdict
    assert "owner" in verdict.reason


@pytest.mark.parametrize(
    ("given_url", "normal"),
    [
        ("http://10.0.0.1:8080", "http://10.0.0.1:8080"),
        ("HTTP://Gateway-1.Example:80/", "http://gateway-1.example:80"),
        ("https://h", "https://h:443"),
        ("http://[::1]:9000", "http://[::1]:9000"),
    ],
)
def test_owner_urls_are_normalised(given_url: str, normal: str) -> None:
    assert normal_owner(given_url) == normal
    assert ClusterIds(SECRET, given_url).advertise == normal


@pytest.mark.parametrize(
    "bad", ["10.0.0.1:8080", "ftp://h:1", "http://h:1/base", "http://h:1?x=1", "http://u:p@h:1"]
)
def test_bad_advertise_urls_say_why(bad: str) -> None:
    with pytest.raises(ValueError, match=r"\w") as refused:
        normal_owner(bad)
    assert "Traceback" not in str(refused.value)


def test_short_secret_and_long_advertise_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        ClusterIds("short", "http://h:1")
    longest = "http://" + "h" * (MAX_OWNER_CHARS * 3 // 4 - len("http://:1")) + ":1"
    assert len(ClusterIds(SECRET, longest).session_id(NONCE)) <= MAX_SESSION_ID_LENGTH
    with pytest.raises(ValueError, match="too long"):
        ClusterIds(SECRET, "http://h" + longest[len("http://") :])


def test_the_nonce_must_be_22_base64url_characters() -> None:
    for bad in ("", "A" * 21, "A" * 23, "A" * 21 + "."):
        with pytest.raises(ValueError, match="nonce"):
            ONE.session_id(bad)


@given(st.text(max_size=200))
def test_garbage_ids_never_raise(garbage: str) -> None:
    verdict = ONE.judge(garbage)
    assert verdict.kind in ("plain", "forged")


@given(st.from_regex(r"[A-Za-z0-9_-]{1,82}\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{22}", fullmatch=True))
def test_well_shaped_garbage_is_forged(garbage: str) -> None:
    assert ONE.judge(garbage).kind == "forged"


# -- the internal proof -------------------------------------------------------------


def test_proof_round_trip_names_the_real_peer() -> None:
    proof = ONE.internal_proof(1000.0, "192.0.2.7", "GET", "/.hopgate/session/x")
    assert TWO.check_proof(proof, 1010.0, "GET", "/.hopgate/session/x") == "192.0.2.7"


@pytest.mark.parametrize(
    ("now", "method", "path"),
    [
        (1000.0 + 61, "GET", "/.hopgate/session/x"),  # stale
        (1000.0, "POST", "/.hopgate/session/x"),  # another request
        (1000.0, "GET", "/.hopgate/session/y"),  # another session
    ],
)
def test_a_proof_fits_one_request_for_a_minute(now: float, method: str, path: str) -> None:
    proof = ONE.internal_proof(1000.0, "192.0.2.7", "GET", "/.hopgate/session/x")
    assert TWO.check_proof(proof, now, method, path) is None


def test_a_foreign_proof_is_refused() -> None:
    foreign = ClusterIds("another cluster's secret, 32 b", "http://10.0.0.1:8080")
    proof = foreign.internal_proof(1000.0, "192.0.2.7", "GET", "/p")
    assert ONE.check_proof(proof, 1000.0, "GET", "/p") is None


@given(st.text(max_size=200))
def test_garbage_proofs_never_raise(garbage: str) -> None:
    assert ONE.check_proof(garbage, 1000.0, "GET", "/p") is None


def test_short_ids_tell_cluster_sessions_apart() -> None:
    """Status and logs show an id's first characters: of a cluster id, its nonce's."""
    first, second = ONE.session_id("a" * 22), ONE.session_id("b" * 22)
    assert first[:6] == second[:6]  # every id of an instance starts alike
    assert (short_id(first), short_id(second)) == ("aaaaaa", "bbbbbb")
    plain = new_session_id()
    assert short_id(plain) == plain[:6]
