"""The "held" rows of ``bench/attacks.py``: attacks the gateway must keep refusing.

Forged ids and tokens, malformed msgpack, thousands of OPENs, an oversized
message, edge smuggling, OPENs naming another host. Each returns a ``Row``
of kind ``held``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from attack_lab import (  # noqa: E402
    Ctx,
    MiB,
    Row,
    get_status,
    raw,
)

from tests.hostile import payloads  # noqa: E402
from tests.hostile import peer as hp  # noqa: E402

# ------------------------------------------------------------- what held


async def held_ids(ctx: Ctx) -> Row:
    gw = ctx.lab.sidecar("--resume-grace", "1")
    http = ctx.http
    c = await hp.create_session(http, gw.url)
    base = f"{gw.url}{hp.SESSION_PATH}/"
    q = {"last": "0", "epoch": "1"}
    forged_id, _ = await get_status(
        http, base + "A" * 22, params=q, headers={hp.TOKEN_HEADER: c.token}
    )
    forged_tok, _ = await get_status(
        http, base + c.session_id, params=q, headers={hp.TOKEN_HEADER: "x" * 43}
    )
    await asyncio.sleep(3.5)
    expired, _ = await get_status(
        http, base + c.session_id, params=q, headers={hp.TOKEN_HEADER: c.token}
    )
    ok = forged_id == 404 and forged_tok == 403 and expired == 404
    return Row(
        "held_ids",
        "forged/replayed/expired ids and tokens",
        f"forged id {forged_id}, forged token {forged_tok}, expired/replayed id "
        f"{expired}: {'refused' if ok else 'NOT refused'}",
        {"forged_id": forged_id, "forged_token": forged_tok, "expired": expired},
        kind="held",
    )


async def held_malformed(ctx: Ctx) -> Row:
    gw = ctx.lab.sidecar()
    worst = 0.0
    neighbour_ok = True
    closed_all = True
    async with hp.HostilePeer(gw.url) as neighbour:
        for bad in payloads.MALFORMED:
            victim = hp.HostilePeer(gw.url)
            await victim.connect()
            t0 = time.monotonic()
            await victim.send_session_raw(bad)
            ended = await victim.until(lambda v=victim: v.closed is not None, 2.0)
            worst = max(worst, time.monotonic() - t0)
            closed_all &= ended
            await victim.aclose()
            sid = neighbour.sid()
            await neighbour.send(hp.open_http(sid, "GET", "/still", [("Host", "x")]))
            st = await neighbour.complete(sid, 5)
            neighbour_ok &= st.head is not None and st.head[2] == 200
    return Row(
        "held_malformed",
        "malformed msgpack",
        f"{len(payloads.MALFORMED)} kinds of malformed msgpack: each closed its session: "
        f"{'yes' if closed_all else 'NO'} in <= {worst:.3f} s; neighbour session "
        f"unaffected: {'yes' if neighbour_ok else 'NO'}",
        {"worst_s": worst, "closed": closed_all, "neighbour_ok": neighbour_ok},
        kind="held",
    )


async def held_opens(ctx: Ctx) -> Row:
    n = ctx.s["opens"]
    gw = ctx.lab.sidecar()
    await ctx.lab.seen(ctx.http)
    async with hp.HostilePeer(gw.url, timeout=30) as peer:
        sids = [peer.sid() for _ in range(n)]
        for i in range(0, n, 100):
            await peer.send(
                *(hp.open_http(s, "GET", "/hold?s=20", [("Host", "x")]) for s in sids[i : i + 100])
            )
        await peer.until(lambda: sum(1 for s in sids if peer.streams[s].reset) >= n - 256, 20)
        await asyncio.sleep(1.0)
        resets = sum(1 for s in peer.streams.values() if s.reset)
        closed = peer.closed
    seen = await ctx.lab.seen(ctx.http)
    at_origin = sum(1 for e in seen if e["path"].startswith("/hold"))
    return Row(
        "held_opens",
        "stream OPENs in one session",
        f"{n:,} stream OPENs in one session: {n - resets:,} admitted, {resets:,} reset, "
        f"{at_origin} reached the origin (cap 256); session "
        f"{'closed ' + str(closed) if closed else 'still open'}",
        {"admitted": n - resets, "at_origin": at_origin},
        kind="held",
    )


async def held_oversize(ctx: Ctx) -> Row:
    gw = ctx.lab.sidecar()
    async with hp.HostilePeer(gw.url, timeout=20) as peer:
        # The gateway may close before the last byte (a lower per-message cap).
        with contextlib.suppress(ConnectionError, aiohttp.ClientError):
            await peer.send(b"\x00" * (16 * MiB + 1))
        await peer.until(lambda: peer.closed is not None, 10)
        await peer.until(lambda: peer.ws_close_code is not None, 2)
        closed = peer.closed
        code = peer.ws_close_code
    return Row(
        "held_oversize",
        "16 MiB + 1 message",
        f"a 16 MiB + 1 session message: closed with {closed[0] if closed else 'nothing'}"
        f" (WebSocket close {code})",
        {"code": closed[0] if closed else None},
        kind="held",
    )


async def held_edge_smuggling(ctx: Ctx) -> Row:
    gw = ctx.lab.sidecar()
    await ctx.lab.seen(ctx.http)
    out = []
    all_400 = True
    for label, req in payloads.EDGE_SMUGGLING.items():
        status = hp.status_of(await raw(gw.port, req, 3))
        all_400 &= status == 400
        out.append(f"{label} {status}")
    await asyncio.sleep(0.3)
    seen = await ctx.lab.seen(ctx.http)
    return Row(
        "held_edge_smuggling",
        "edge smuggling",
        f"{', '.join(out)}; requests at the origin: {len(seen)}",
        {"all_400": all_400, "at_origin": len(seen)},
        kind="held",
    )


async def held_open_variants(ctx: Ctx) -> Row:
    gw = ctx.lab.sidecar()
    await ctx.lab.seen(ctx.http)
    variants = payloads.open_variants(ctx.lab.evil_port)
    sids = []
    async with hp.HostilePeer(gw.url) as peer:
        for method, target, headers in variants:
            sid = peer.sid()
            sids.append(sid)
            await peer.send(hp.open_http(sid, method, target, headers))
            await peer.answer(sid, 5)
        ws_sid = peer.sid()
        await peer.send(
            hp.open_ws(ws_sid, f"http://127.0.0.1:{ctx.lab.evil_port}/ws", [("Host", "x")])
        )
        await peer.answer(ws_sid, 5)
        await asyncio.sleep(0.5)
        refused = sum(1 for s in sids if peer.streams[s].refused)
        alive = peer.closed is None
    seen = await ctx.lab.seen(ctx.http)
    evil = sum(1 for e in seen if e["site"] == "evil")
    steal_at_main = sum(1 for e in seen if e["site"] == "main")
    return Row(
        "held_open_variants",
        "tunnel OPENs naming another host",
        f"{len(variants)} tunnel OPEN variants (+1 WS) naming another host: {refused} "
        f"refused, reached the other host: {evil}, reached the upstream: "
        f"{steal_at_main}; session {'still open' if alive else 'closed'}",
        {"variants": len(variants), "refused": refused, "evil": evil},
        kind="held",
    )
