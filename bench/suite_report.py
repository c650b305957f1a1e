"""docs/benchmarks.md and its plots from one run of ``python -m bench``.

The tables follow issue 13's: absolute figures, each with its ratio to the
anchor in the same run (ratios are what a shared, noisy machine keeps
stable), then every target of the issue marked met or missed. A missed
target names its profiled cause: ``CAUSES`` below, written from ``python -m
bench --profile ROW`` runs (cProfile in the gateway processes), keyed by
target; update it when a profile says something else.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

Result = dict[str, Any]
#: Issue 13's thresholds that more than one place states (the target table, the
#: floor sentences, the keys of ``CAUSES``): 64 KiB messages against python-engineio
#: WebSocket and raw aiohttp (at least), the legacy app against direct with 1 client
#: and with 100 (at least) and its paced p50 (at most).
BIG_VS_EIO, BIG_VS_RAW = 1.0, 0.6
ONE_CLIENT, MANY_CLIENTS, PACED_P50 = 0.35, 0.6, 2.0
#: The message table's floor column: ``raw`` through one ``bench/bare_relay.py``.
RELAYED = "raw-relay"
#: Its reference column: ``raw`` through one ``bench/bare_ws_relay.py`` (aiohttp's
#: WebSocket server and client, nothing else), where the hop columns' gateway would be.
WS_RELAYED = "raw-ws-relay"
MSG_COLUMNS = {
    "raw": "raw aiohttp WebSocket",
    RELAYED: "raw aiohttp WebSocket through a bare TCP relay",
    WS_RELAYED: "raw aiohttp WebSocket through a bare WebSocket relay",
    "eio-ws": "python-engineio WebSocket",
    "eio-poll": "python-engineio polling",
    "hop-ws": "hop session over WebSocket",
    "hop-lp": "hop session over long-poll",
}
LEGACY_COLUMNS = {
    "direct": "direct",
    "relays": "two bare TCP relays",
    "edges": "one gateway, no hop",
    "bare-ws": "bare WebSocket pair",
    "plain": "plain hop (no tunnel)",
    "websocket": "WebSocket hop",
    "long-poll": "long-poll hop",
}

#: Why a target is missed, as the profiles of ``--profile ROW`` showed it (see the module doc).
_PER_MESSAGE = (
    "`python -m bench --profile messages-hop-ws` and py-spy (2026-12-03/04, after the "
    "per-message work: no timer, task or wake-up per message; a message arriving alone is "
    "framed and read without the batch machinery): met in the full run of 2026-12-04 (x2.09, "
    "5.0 us CPU per message in the server gateway). The msg/s of this row is bound by the "
    "client process: one event-loop turn and one hop WebSocket write per message in the "
    "Python hop client (~7-8 us a message, 2.6 us of it the loop turn itself), where "
    "python-engineio's client sends one frame per message from the same kind of loop; "
    "python-engineio's own rate moved 11k-44k between runs on this machine."
)
_PER_REQUEST = (
    "`bench/request_cost.py` and py-spy of both gateways (2026-12-04, after the per-request "
    "work of issue 13: lean origin client, bytes head path, fewer handler steps, GC tuned): "
    "CPU per request (client gateway, server gateway), five runs within 20 minutes: 1 client "
    "plain 170-220, 183-217 us, WebSocket hop 270-283, 250-287 us; 100 clients plain 93-97, "
    "93-97 us, WebSocket hop 90-107, 77-87 us: at 100 clients a tunnelled request costs "
    "what a plain one does, at 1 client ~1.35x. Since a small answer crosses the hop whole "
    "(one RESPONSE_WHOLE frame instead of RESPONSE, DATA and END; 2026-12-04 19:00, six "
    "alternating runs of `request_cost.py`'s WebSocket hop, medians) the WebSocket hop's "
    "are 312 and 278 us at 1 client (330 and 305 before) and 126 and 98 us at 100 clients "
    "(131 and 106 before). "
    "What the extra CPU is made of (cProfile of the running gateways, 1 client, 2026-12-04 "
    "20:30; a coroutine's resumption counts as a call): Python function calls per request, "
    "client gateway and server gateway, plain forwarding 274 and 287 (88 and 99 of them in "
    "hopgate's own code), the WebSocket hop 510 and 438 (324 and 270 its own, over 208 and "
    "191 distinct functions, none called more than 10 times), the long-poll hop 600 and "
    "523, the bare WebSocket pair 167 and 245. The session, tunnel and glue layers add "
    "~400 small calls per request across both gateways, each with its own check (stream "
    "state, window, replay buffer, timers), and at 1 client each runs cold: that is the "
    "~125 us a tunnelled request costs over a plain one, and the ~190 us over the bare "
    "pair, with no one piece to cut. "
    "Each tunnelled request costs the session and tunnel layers on both gateways (session "
    "feed and dispatch ~22% of the server gateway, ~18% of the client gateway) plus a hop "
    "frame write each way (socket writes ~15% of each); the rest is spread over ~30 "
    "functions of under 1.5% each (head checks and encoding, routing, flush scheduling), "
    "with no one piece left to cut. Loop turns are not the cost: strace -c of both gateways "
    "(1 client, 2,000 requests) had epoll_wait per request 8 (client gateway) and 7 (server) "
    "against 5 and 6 forwarding plainly, syscalls otherwise the same (2 sendto, 2 recvfrom); "
    "since the hop frame is written in the tunnel driver's flush, the session timer moves "
    "without a callback of its own and a small answer leaves in one flush (2026-12-04) a "
    "tunnelled request takes 6.6 and 6.1 loop turns and 8.2 and 7.2 loop callbacks (plain: "
    "6.0 turns, 6 callbacks; from 8.7 and 7.1 turns, 12.3 and 11.3 callbacks), and its CPU "
    "did not move beyond the noise (five alternating runs each: both gateways at 1 client "
    "540-610 us before, 547-596 after, plain 383-504). The cost is in code that runs cold: "
    "in the running client gateway the session "
    "decode of one answer (`FrameDecoder.decode_hot`, perf_counter around it, 3,200 requests) "
    "takes 13 us as the first call after a wake-up and 4.5 us when called again at once, "
    "against 1.9 us in a loop: each wake-up on this machine starts with cold caches and "
    "branch predictors, so a path costs what the distinct code it runs costs, and a "
    "tunnelled answer runs the WebSocket reader, two decoders and the session and tunnel "
    "layers where a plain one runs aiohttp's C response parser. The 1- and 100-client "
    "targets are beyond two HTTP hops as such: forwarding plainly, with no tunnel at all, "
    "the two gateways reach 0.21-0.30x direct at 1 client and 0.25-0.37x at 100 clients "
    "(the same runs; the plain hop column of every run since). Where the extra CPU "
    "goes at 1 client (py-spy of the client gateway, 2026-12-04 13:40, non-idle samples per "
    "1,000 requests, plain 170 against WebSocket hop 280): not the request side (the "
    "tunnel's `Opener._forward` 78 against plain `Forwarder._relay` 90) but reading the "
    "answer off the hop, 75 (session decode and acks 31, tunnel `receive_frames` 30, the "
    "rest in pieces under 3%) where a plain answer costs 34: the layered decode that "
    "batching spreads over many answers at 100 clients. With 100 clients "
    "the client gateway is the bottleneck, "
    "most of it in aiohttp's web server per request (the same in plain forwarding). Three "
    "extra processes' worth of parsing and writing on 2 cores: their wake-ups queue behind "
    "each other, so the 100-client rates sit at x0.29-0.40 of direct: all processes "
    "together spend ~457 us of CPU per request through the hops against ~127 us direct "
    "(2026-12-04 13:49), and 0.6x would need both gateways together at ~85 us per "
    "request, less than the aiohttp origin alone. The direct path "
    "itself is bimodal on this machine (1 client 2.5k-5.6k events/s, paced p50 3.4-18.6 "
    "ms across the runs of 2026-12-03/04, the hops 864-1,193 events/s and 15-28 ms), so "
    "its ratios move with it; the legacy rows interleave the paths (LEGACY_ROUNDS) to "
    "share the drift. "
    "Three cuts of that cold per-request work (2026-12-05): the session decodes a small "
    "batch whole with one shared drained Unpacker (`BatchReader.whole`: an ACK and a DATA "
    "4.5 -> 1.7 us in a loop) and keeps an ACK as its count, not an object; the answering "
    "gateway checks a tunnelled head with C scans (a method set, `bytes.translate`) where "
    "three regular expressions ran cold; the session's next deadline is found without "
    "lists. Both gateways at 1 client (`bench/compare_trees.py`: the trees' paths up at "
    "once and run in turn, 12-16 blocks of 1.5 s each, medians), two runs: 780 -> 747 "
    "and 778 -> 728 us per request, plain forwarding 623 and 609 (x1.25 -> x1.20 plain). "
    "A hook that handed each WebSocket message to the session "
    "straight from aiohttp's parser, saving the receive loop's task wake-up per message, "
    "measured 753 in the same rounds: no gain, so it was not kept. "
    "Where the client gateway's extra ~80 us go (2026-12-05, `perf_counter_ns` around each "
    "step in a copy of the tree, 1 client, ~4,700 requests, medians, cold as they run): "
    "sending a request 89 us against plain's 58 (the OPEN 13; the session's batch 8; "
    "framing, masking and writing the WebSocket frame 33 where plain's socket write is 26); "
    "reading the answer 47-53 us (session decode and acks 12; the tunnel's frames 23, of "
    "which the RESPONSE_WHOLE head 10, its END 4.5, the decode 4.4; routing 5) where a plain "
    "answer is parsed by aiohttp's C parser; answering the client 66 against 60. No step is "
    "more than ~10% of the gap. Compiling the whole hop path to C with mypyc "
    "(`bench/compiled_tree.py`: 59 modules of the session, tunnel and glue layers, the hop "
    "session, the WebSocket transport and the forwarder) cut the hop's CPU per request by "
    "0-10% (six interleaved `compare_trees.py` runs: x0.90-1.00), leaving it x1.07-1.20 of "
    "plain forwarding: what costs is the work itself (the objects the layers build, the "
    "asyncio and aiohttp calls they make), not the interpreter running their code. The bare "
    "WebSocket pair (`compare_trees.py --bare`: aiohttp's stock pieces, no session, no "
    "tunnel) cost x0.86-0.88 of plain in the same runs: the hop as such is not what costs, "
    "the session that numbers, acknowledges and can resend every request and the tunnel "
    "that checks every head are, and on this stack they cost more than a plain forward."
)
_IN_PLACE = (
    "One copy fewer (2026-12-05): a tunnel message over 64 KiB that is one frame is read "
    "where it lies with `unpackb` instead of fed to an Unpacker first (5.1 -> 1.7 us a 64 "
    "KiB message). Twelve runs of each build, interleaved (the suite's anchor server, "
    "`hopgate server` and `suite_msgload.py --figures sizes --sizes 65536`, 256 MiB each): "
    "the server gateway's CPU per 256 MiB 0.331 -> 0.326 s over a WebSocket hop and 0.348 "
    "-> 0.328 s over a long-poll hop, median MB/s 757 -> 770 and 483 -> 500; `bench/"
    "compare_trees.py --row large`, 4 blocks each: 1.48 -> 1.40 and 1.74 -> 1.60 s of "
    "server gateway CPU per GiB, 623 -> 666 and 387 -> 405 MB/s. Session "
    "batches keep the streaming reader: read in place as well, they cost the long-poll "
    "gateway 7% more, as a long-poll body holds several frames and each is decoded twice."
)
_RTT_NOISE = (
    "not profiled: on this shared machine the p99 of the 50 ms RTT rows moves 2-3x between "
    "runs (direct p99 92, 110 and 160 ms in three runs of 2026-12-03); the scheduling "
    "delay at load 6-10 is as large as the effect measured. Rerun on a quiet machine "
    "before reading it."
)
#: Why a target is missed, as the profiles of ``--profile ROW`` showed it (see the module
#: doc); keys are words of the target's text. Written from the runs of 2026-12-03 and 04.
CAUSES: dict[str, str] = {
    "CPU per message": _PER_MESSAGE,
    "one message per loop turn": _PER_MESSAGE,
    "64 KiB over a WebSocket hop": (
        "CPU on 2 cores, measured by process (2026-12-04, after `tune_malloc`, every process "
        "with the same allocator settings; `bench/suite_msgload.py --figures sizes --sizes "
        "65536`, the difference of a 512 MiB and a 2 GiB run, so start-up is out): per 64 KiB "
        "message the hop client spends ~35 us, the server gateway ~57 us and the origin ~22 "
        "us (114 us in all) where python-engineio's client and server spend ~12 and ~39 us "
        "(51 us). The gateway alone, which reads and unmasks each message as python-engineio's "
        "server does and then masks and writes it again as its client does, costs more than "
        "python-engineio's whole path: with a relay in the middle, 1.0x python-engineio is out "
        "of reach on 2 cores. What is left to cut is in the hop client (35 us against 12): "
        "py-spy had socket sends and aiohttp's masking as its largest parts; the payload's "
        "copies through the layers (tunnel frame, session frame, aiohttp's masking makes two) "
        "are ~1-2 us each (a session frame built by hand instead of by msgpack: 1.3 -> 0.7 us "
        "for 64 KiB), so framing a message once would save a few us of it. Tried and not "
        "taken: a 4 MiB stream window (~+13% before the allocator change, and it needs the "
        "per-stream event bound raised), WINDOWs at a quarter of the window instead of half "
        "(no change in 4 alternating pairs: 866-998 against 854-1,069 MB/s). The allocator "
        "settings took the row 747 -> 936-1,047 MB/s and python-engineio's 1,341 -> "
        "1,835-2,115. " + _IN_PLACE
    ),
    "64 KiB over a long-poll hop": (
        "CPU on 2 cores, and one process more than a WebSocket hop (HAProxy, refusing the "
        "upgrade). Since the gateways keep freed buffers (`tune_malloc`, 2026-12-04; every "
        "process of the suite gets the same settings) the row went 236 -> 734-753 MB/s: the "
        "client had made a `brk` call every other message and spent 1.8 s of system CPU per "
        "GiB faulting its heap back in. Per GiB now (the row's processes run by hand: anchor, "
        "`hopgate server`, HAProxy, `suite_msgload.py --figures sizes --sizes 65536`): client "
        "~0.8 s, server gateway ~0.9 s, HAProxy ~0.5 s, origin ~0.25 s, where "
        "python-engineio's client and server spend ~1.2 s in all. The long-poll hop streams "
        "(one streamed POST and one streamed GET carry the batches, through HAProxy with "
        "`option http-no-delay` as the recipe sets it). " + _IN_PLACE
    ),
    "bursts over a WebSocket hop": (
        "CPU on 2 cores: three processes (client, gateway, origin) share them where raw "
        "aiohttp has two. The full runs gave x1.01 (133k, raw 132k), x0.79 (119k, raw 150k) "
        "and x0.78 (262k, raw 334k on a quiet machine, 2026-12-04), then x1.85 and x2.07 "
        "(raw 194k and 166k: raw's own burst is bimodal here, 163k-285k in three runs of one "
        "minute); the server gateway's "
        "receive path was cut from 2.5-2.9 to 1.8-2.0 us per message in bursts (2026-12-03/04), "
        "but it shares the two cores with the client and the origin, where raw aiohttp's "
        "client and server each have a core to themselves. " + _PER_MESSAGE
    ),
    f"1 client >= {ONE_CLIENT:g}x": _PER_REQUEST,
    f"clients >= {MANY_CLIENTS:g}x": _PER_REQUEST,
    "paced p50": _PER_REQUEST,
    "<= plain forwarding": _PER_REQUEST,
    "long-poll hop bytes": (
        "from the relay's counts and the heads on the wire, not a profile: between gateways a "
        "legacy poll now costs one hop request (a POST that polls, answered with lean heads), "
        "and HTTP/1.1 puts a floor under that: about 280 bytes of heads per event (request line "
        "with the session id and query ~93, Host 23, the token 62, Content-Length 20, the "
        "answer's head ~82) on top of the ~237 bytes the same event costs on a WebSocket hop. "
        "Shorter names would save ~30 bytes more; the 0.3x target needs no head per event, "
        "which only a WebSocket (or HTTP/2) hop gives."
    ),
    "long-poll hop at": _RTT_NOISE,
    "hop session over WebSocket, same": (
        "not profiled: compare raw aiohttp's p99 on the same delayed path in the RTT row of "
        "the message table; at load 6-10 on 2 shared cores that p99 moved by tens of ms "
        "between runs (31.6 and 65.8 ms on 2026-12-03), more than the miss."
    ),
}


def get(doc: Any, *keys: str) -> Any:
    """``doc[k1][k2]...`` or None when any step is missing or failed."""
    for key in keys:
        if not isinstance(doc, dict) or key not in doc:
            return None
        doc = doc[key]
    return doc


def cell(value: Any, fmt: str = "{:,.0f}") -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and math.isnan(value):
        return "—"
    return fmt.format(value)


def failure(doc: Any, *keys: str) -> str | None:
    """The ``failed`` reason on the way to ``keys``, if any."""
    for key in (None, *keys):
        if key is not None:
            doc = doc.get(key) if isinstance(doc, dict) else None
        if isinstance(doc, dict) and "failed" in doc:
            return str(doc["failed"])
    return None


def fig(doc: Any, keys: tuple[str, ...], fmt: str = "{:,.0f}", base: Any = None) -> str:
    """A figure with its ratio to ``base`` (``x0.87``), or why it failed."""
    why = failure(doc, *keys)
    if why is not None:
        return "did not finish" if "did not finish" in why else f"failed ({why[:60]})"
    value = get(doc, *keys)
    text = cell(value, fmt)
    if base is not None and value and isinstance(base, int | float) and base:
        text += f" (x{value / base:.2f})"
    return text


def message_table(msgs: Result, rtt_ms: float) -> list[str]:
    raw = msgs.get("raw", {})
    rows = [
        "| figure | " + " | ".join(MSG_COLUMNS.values()) + " |",
        "|---" * (len(MSG_COLUMNS) + 1) + "|",
    ]

    def row(label: str, render: Callable[[str, Result], str]) -> None:
        rows.append(
            f"| {label} | " + " | ".join(render(k, msgs.get(k, {})) for k in MSG_COLUMNS) + " |"
        )

    base_burst = get(raw, "burst", "msg_s")
    row("burst, client -> server, msg/s", lambda k, d: fig(d, ("burst", "msg_s"), base=base_burst))
    base_turns = get(msgs, "eio-ws", "turns", "msg_s")

    def turns(k: str, d: Result) -> str:
        text = fig(d, ("turns", "msg_s"), base=base_turns)
        cpu = get(d, "turns", "cpu_us")
        return text + (f", {cpu:.0f} us CPU" if cpu is not None else "")

    row(
        "one message per loop turn, msg/s (x python-engineio WS), server-side CPU per message",
        turns,
    )

    def rtt(k: str, d: Result) -> str:
        why = failure(d, "rtt")
        if why:
            return "did not finish" if "did not finish" in why else "failed"
        return f"{cell(get(d, 'rtt', 'p50_us'))} / {cell(get(d, 'rtt', 'p99_us'))}"

    row("round trip p50 / p99, us", rtt)
    base_large = get(raw, "sizes", "mb_s", "65536")

    def large(k: str, d: Result) -> str:
        if get(d, "sizes", "mb_s", "65536") is None and get(d, "sizes", "failed_sizes"):
            return "did not finish"
        return fig(d, ("sizes", "mb_s", "65536"), base=base_large)

    row("64 KiB messages, MB/s", large)

    def ticks(k: str, d: Result) -> str:
        t = get(msgs, "rtt", k)
        if failure(msgs, "rtt", k):
            return "failed"
        if t is None:
            return "—"
        return f"{t['p50_ms']:.1f} / {t['p99_ms']:.1f}"

    row(f"{rtt_ms:.0f} ms RTT, 100 msg/s server -> client, one-way p50 / p99 ms", ticks)
    return rows


def legacy_table(leg: Result, scale: Any) -> list[str]:
    direct = leg.get("direct", {})
    rows = [
        "| case | " + " | ".join(LEGACY_COLUMNS.values()) + " |",
        "|---" * (len(LEGACY_COLUMNS) + 1) + "|",
    ]

    def row(label: str, render: Callable[[Result], str]) -> None:
        rows.append(
            f"| {label} | " + " | ".join(render(leg.get(k, {})) for k in LEGACY_COLUMNS) + " |"
        )

    def latency(key: str) -> Callable[[Result], str]:
        def render(d: Result) -> str:
            why = failure(d, key)
            if why:
                return f"failed ({why[:60]})"
            p50, p99 = get(d, key, "p50_ms"), get(d, key, "p99_ms")
            return f"{cell(p50, '{:.1f}')} / {cell(p99, '{:.1f}')}"

        return render

    row(
        "1 client, as fast as it can, events/s",
        lambda d: fig(d, ("one", "per_s"), base=get(direct, "one", "per_s")),
    )
    row(
        f"{scale.many} clients, as fast as they can, deliveries/s",
        lambda d: fig(d, ("many", "per_s"), base=get(direct, "many", "per_s")),
    )
    row(f"{scale.many} clients x {scale.rate:.0f} events/s, latency p50 / p99 ms", latency("paced"))
    row(
        f"{scale.rtt_s * 1e3:.0f} ms round trip on the path, 1 client, "
        f"{scale.rate:.0f} events/s, p50 / p99 ms",
        latency("rtt"),
    )
    row(
        "bytes on the wire per delivered event (hop vs direct link)",
        lambda d: fig(
            d, ("bytes", "bytes_per_event"), base=get(direct, "bytes", "bytes_per_event")
        ),
    )
    row(
        "gateway CPU per event, 1 client, us (every gateway on the path)",
        lambda d: fig(d, ("one", "gateway_cpu_us"), "{:,.0f}"),
    )
    row(
        f"gateway CPU per event, {scale.many} clients, us (every gateway on the path)",
        lambda d: fig(d, ("many", "gateway_cpu_us"), "{:,.0f}"),
    )
    return rows


Target = tuple[str, str, str, bool | None]


def _ratio(res: Result, top: tuple[str, ...], bottom: tuple[str, ...]) -> float | None:
    a, b = get(res, *top), get(res, *bottom)
    return a / b if isinstance(a, int | float) and isinstance(b, int | float) and b else None


def _mark(item: str, text: str, value: float | None, ok: bool, unit: str = "x") -> Target:
    if value is None:
        return (item, text, "not measured", None)
    shown = f"x{value:.2f}" if unit == "x" else f"{value:.1f} {unit}"
    return (item, text, shown, ok)


def targets(res: Result) -> list[Target]:
    """(item, target, measured, met) for every target of issue 13."""
    rtt = res["scale"]["rtt_s"] * 1e3
    out: list[Target] = []
    for q in ("p50_ms", "p99_ms"):
        r = _ratio(res, ("legacy", "long-poll", "rtt", q), ("legacy", "direct", "rtt", q))
        text = f"legacy app, long-poll hop at {rtt:.0f} ms RTT, {q[:3]} within 10% of direct"
        out.append(_mark("1", text, r, r is not None and r <= 1.10))
    v = get(res, "messages", "rtt", "hop-lp", "p99_ms")
    text = f"hop session over long-poll, {rtt:.0f} ms RTT, 100 msg/s: p99 <= RTT + 10 ms"
    out.append(_mark("1", text, v, v is not None and v <= rtt + 10, "ms"))
    v = get(res, "messages", "rtt", "hop-ws", "p99_ms")
    text = "hop session over WebSocket, same: p99 <= RTT/2 + 5 ms"
    out.append(_mark("1", text, v, v is not None and v <= rtt / 2 + 5, "ms"))
    r = _ratio(
        res, ("messages", "hop-ws", "turns", "msg_s"), ("messages", "eio-ws", "turns", "msg_s")
    )
    text = "one message per loop turn, WebSocket hop >= 2x python-engineio WebSocket"
    out.append(_mark("2", text, r, r is not None and r >= 2))
    v = get(res, "messages", "hop-ws", "turns", "cpu_us")
    text = "about <= 10 us CPU per message (server gateway)"
    out.append(_mark("2", text, v, v is not None and v <= 10, "us"))
    r = _ratio(res, ("messages", "hop-ws", "burst", "msg_s"), ("messages", "raw", "burst", "msg_s"))
    out.append(
        _mark("2", "bursts over a WebSocket hop >= 0.9x raw aiohttp", r, r is not None and r >= 0.9)
    )
    big = ("sizes", "mb_s", "65536")
    for kind, name in (("hop-ws", "WebSocket"), ("hop-lp", "long-poll")):
        unfinished = get(res, "messages", kind, "sizes", "failed_sizes")
        if failure(res, "messages", kind, "sizes") or (unfinished and "65536" in unfinished):
            text = (
                f"64 KiB over a {name} hop >= {BIG_VS_EIO:.1f}x python-engineio, "
                f">= {BIG_VS_RAW:.1f}x raw aiohttp"
            )
            out.append(("3", text, "did not finish", False))
            continue
        for anchor, aname, floor in (
            ("eio-ws", "python-engineio WebSocket", BIG_VS_EIO),
            ("raw", "raw aiohttp", BIG_VS_RAW),
        ):
            r = _ratio(res, ("messages", kind, *big), ("messages", anchor, *big))
            text = f"64 KiB over a {name} hop >= {floor:.1f}x {aname}"
            out.append(_mark("3", text, r, r is not None and r >= floor))
    out += _legacy_targets(res)
    v = get(res, "memory", "idle_session", "kb_per")
    text = f"RSS per idle hop session at {res['scale']['idle_sessions']:,} sessions <= 16 KB"
    out.append(_mark("6", text, v, v is not None and v <= 16, "KB"))
    return out


def _legacy_targets(res: Result) -> list[Target]:
    out: list[Target] = []
    many = res["scale"]["many"]
    for kind in ("websocket", "long-poll"):
        checks = (
            ("4", f"{kind} hop bytes per delivered event <= 0.3x direct",
             ("bytes", "bytes_per_event"), ("direct", "bytes", "bytes_per_event"),
             lambda r: r <= 0.3),
            ("5", f"legacy app through a {kind} hop, 1 client >= {ONE_CLIENT:g}x direct",
             ("one", "per_s"), ("direct", "one", "per_s"), lambda r: r >= ONE_CLIENT),
            ("5", f"legacy app through a {kind} hop, {many} clients >= {MANY_CLIENTS:g}x direct",
             ("many", "per_s"), ("direct", "many", "per_s"), lambda r: r >= MANY_CLIENTS),
            ("5", f"legacy app through a {kind} hop, paced p50 <= {PACED_P50:g}x direct",
             ("paced", "p50_ms"), ("direct", "paced", "p50_ms"), lambda r: r <= PACED_P50),
            *(
                ("5", f"gateway CPU per request through a {kind} hop <= plain forwarding, "
                 f"{label}", (row, "gateway_cpu_us"), ("plain", row, "gateway_cpu_us"),
                 lambda r: r <= 1.0)
                for row, label in (("one", "1 client"), ("many", f"{many} clients"))
            ),
        )  # fmt: skip
        for item, text, top, bottom, ok in checks:
            r = _ratio(res, ("legacy", kind, *top), ("legacy", *bottom))
            out.append(_mark(item, text, r, r is not None and ok(r)))
    return out


def memory_lines(mem: Result, scale: Any) -> list[str]:
    def kb(key: str) -> str:
        why = failure(mem, key)
        return f"failed ({why[:80]})" if why else f"{cell(get(mem, key, 'kb_per'), '{:.1f}')} KB"

    def count(key: str, field: str, planned: int) -> str:
        return f"{get(mem, key, field) or planned:,}"

    def held(key: str) -> str:
        sent, got = get(mem, key, "sent") or scale["held_polls"], get(mem, key, "held")
        reached = f" ({got:,} reached the origin)" if got is not None and got < sent else ""
        return f"{sent:,} held{reached}"

    return [
        "| idle cost | RSS each |",
        "|---|---|",
        "| hop session in `hopgate server`, "
        f"{count('idle_session', 'opened', scale['idle_sessions'])} idle | {kb('idle_session')} |",
        f"| raw aiohttp WebSocket, {count('raw_socket', 'opened', scale['raw_sockets'])} idle "
        f"| {kb('raw_socket')} |",
        "| held legacy long-poll through both gateways, WebSocket hop, "
        f"{held('held_websocket')} | {kb('held_websocket')} |",
        "| held legacy long-poll through both gateways, long-poll hop, "
        f"{held('held_long-poll')} | {kb('held_long-poll')} |",
    ]


def render(res: Result, plots: list[str]) -> str:
    """The whole page."""
    rtt_ms = res["scale"]["rtt_s"] * 1e3
    lines = [*_head(res), *_tables(res, rtt_ms)]
    lines += poll_ahead_lines(res.get("poll_ahead"))
    lines += _target_lines(res)
    if res.get("profile"):
        lines += ["### Profile", "", "```", *res["profile"], "```", ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{p}](benchmarks/{p})" for p in plots] + [""]
    return "\n".join(lines)


def _head(res: Result) -> list[str]:
    env = res["environment"]
    return [
        "# Benchmarks",
        "",
        "Written by `python -m bench` (`make bench`); do not edit by hand, rerun it. "
        "Every figure comes from one run on one machine, each beside its anchor in the same run: "
        "(xN) is the ratio to the first column (message table: raw aiohttp; per-loop-turn: "
        "python-engineio WebSocket; legacy table: the direct connection). On a shared machine the "
        "absolute figures move from run to run; the ratios are what to compare. "
        "How each row is measured: "
        "[bench/README.md](../bench/README.md#the-suite-python--m-bench).",
        "",
        f"Run: {res['started']} UTC, scale `{res['scale_name']}`, {res['took_s']:.0f} s. "
        f"Gateways from `{env['tree']}` at {env['commit']}.",
        "",
        f"Machine: {env['cpu']}, {env['cores']} cores, Linux {env['kernel']}. "
        f"Python {env['python']}, aiohttp {env['aiohttp']}, python-engineio {env['engineio']}."
        + (
            f" Load average (1/5/15 min) {env['load']} at the start, "
            f"{env.get('load_end', '?')} at the end."
            if "load" in env
            else ""
        ),
        "",
    ]


def _tables(res: Result, rtt_ms: float) -> list[str]:
    scale = res["scale"]

    class S:  # attribute access for the table helpers
        many, rate, rtt_s = scale["many"], scale["rate"], scale["rtt_s"]

    return [
        "## Messages: hop sessions beside the anchors",
        "",
        "Two processes (client, server) on loopback, 100-byte messages unless "
        "said; for the hop kinds a `hopgate server` sits in front of the same server and "
        "the client is a Python hop-session client speaking what the browser shim speaks. "
        "The long-poll hop goes through a path that refuses WebSocket upgrades. The two "
        "relay columns put one process between the raw client and the server, where the hop "
        "columns have their gateway: a bare TCP relay (`bench/bare_relay.py`) only copies "
        "bytes; a bare WebSocket relay (`bench/bare_ws_relay.py`) ends the client's "
        "WebSocket and sends each message on over its own, with aiohttp's stock pieces and "
        "nothing else (no session, no tunnel).",
        "",
        *message_table(res.get("messages", {}), rtt_ms),
        "",
        "## A legacy long-poll app end to end",
        "",
        "Its client -> `hopgate client` -> hop -> `hopgate server` -> its origin "
        "(`bench/legacy_app.py`), against the same app direct. Polls carry a browser's headers "
        "(a 400-byte cookie, user agent, accept headers). The RTT row and the bytes row put "
        "`bench/relay.py` on the link (client-origin direct, gateway-gateway for the hops); "
        'bytes are counted there, both directions. "Two bare TCP relays" puts two processes '
        "that only copy bytes (`bench/bare_relay.py`: no HTTP parsing, no tunnel) where the "
        "gateways would be: the floor under any pair of Python (asyncio) gateways on this "
        'machine. "One gateway, no hop" is one `hopgate server` forwarding the app to its '
        "origin: the two HTTP edges that every hop path crosses, with no hop and no second "
        'gateway. "Bare WebSocket pair" (`bench/bare_tunnel.py`) is two aiohttp processes '
        "where the gateways would be, carrying each request whole as one WebSocket message "
        "and making it with aiohttp's client: no session, no tunnel, nothing resent or "
        "resumed: a minimal gateway pair on aiohttp's stock pieces, measured to show what "
        'hopgate\'s own layers cost on top. "Plain hop" is both gateways with `--upgrade '
        "never`: plain HTTP forwarding "
        "between them, no session and no tunnel, run for the rates and the CPU per request "
        "that the tunnelled requests' is compared with.",
        "",
        *legacy_table(res.get("legacy", {}), S),
        "",
        "## Idle cost",
        "",
        *memory_lines(res.get("memory", {}), scale),
        "",
    ]


def _ws_relay_sentence(msgs: Result) -> str:
    """What the bare WebSocket relay moved at 64 KiB, and the WebSocket hop beside it."""
    big = ("sizes", "mb_s", "65536")
    raw = _ratio(msgs, (WS_RELAYED, *big), ("raw", *big))
    eio = _ratio(msgs, (WS_RELAYED, *big), ("eio-ws", *big))
    hop = _ratio(msgs, ("hop-ws", *big), (WS_RELAYED, *big))
    if raw is None:
        return ""
    return (
        " A relay made of aiohttp's WebSocket server and client and nothing else "
        f"(`bench/bare_ws_relay.py`) moved them at x{raw:.2f} raw aiohttp and "
        f"{cell(eio, 'x{:.2f}')} python-engineio; the WebSocket hop at "
        f"{cell(hop, 'x{:.2f}')} of that relay."
    )


def floor_sentence(res: Result, item: str) -> str:
    """What bare TCP relays (and, for item 5, one gateway with no hop and a bare WebSocket
    pair) reached in this run.

    For a missed item-3 or item-5 target; "" when the run has no floor rows
    (an older run) or the item has none.
    """
    if item == "3":
        msgs = res.get("messages", {})
        big = ("sizes", "mb_s", "65536")
        raw = _ratio(msgs, (RELAYED, *big), ("raw", *big))
        eio = _ratio(msgs, (RELAYED, *big), ("eio-ws", *big))
        if raw is None:
            return ""
        return (
            "The floor, in this run: raw aiohttp through one process that only copies bytes "
            "(`bench/bare_relay.py`; a WebSocket hop adds one process, the server gateway, a "
            "long-poll hop two, with the proxy that refuses the upgrade) moved 64 KiB "
            f"messages at x{raw:.2f} raw aiohttp (target {BIG_VS_RAW:.1f}x) and "
            f"{cell(eio, 'x{:.2f}')} python-engineio (target {BIG_VS_EIO:.1f}x); whatever the "
            "gateway does comes on top of that." + _ws_relay_sentence(msgs)
        )
    if item != "5":
        return ""
    leg = res.get("legacy", {})
    many = res["scale"].get("many", 100)

    def reached(kind: str) -> tuple[str, str, str] | None:
        one = _ratio(leg, (kind, "one", "per_s"), ("direct", "one", "per_s"))
        lots = _ratio(leg, (kind, "many", "per_s"), ("direct", "many", "per_s"))
        paced = _ratio(leg, (kind, "paced", "p50_ms"), ("direct", "paced", "p50_ms"))
        if one is None and lots is None:
            return None
        return cell(one, "x{:.2f}"), cell(lots, "x{:.2f}"), cell(paced, "x{:.2f}")

    floor, edges = reached("relays"), reached("edges")
    out = []
    if floor:
        out.append(
            "The floor, in this run: two processes that only copy bytes "
            "(`bench/bare_relay.py`, no HTTP, no tunnel) where the gateways would be reached "
            f"{floor[0]} direct with 1 client (target {ONE_CLIENT:g}x), {floor[1]} with "
            f"{many} clients (target {MANY_CLIENTS:g}x) and a paced p50 of {floor[2]} direct "
            f"(target {PACED_P50:g}x); whatever a gateway does comes on top of that."
        )
    if edges:
        cpu = get(leg, "edges", "one", "gateway_cpu_us")
        out.append(
            "The edges alone, in this run: one `hopgate server` in front of the origin, no hop "
            "(the two HTTP edges every hop path crosses: aiohttp's server towards the client, "
            f"the origin client towards the origin), reached {edges[0]} direct with 1 client, "
            f"{edges[1]} with {many} clients and a paced p50 of {edges[2]} direct"
            + (f", at {cpu:,.0f} us of CPU per request (1 client)." if cpu else ".")
        )
    if pair := reached("bare-ws"):
        cpus = [get(leg, "bare-ws", key, "gateway_cpu_us") for key in ("one", "many")]
        hop = [
            _ratio(leg, ("websocket", key, "gateway_cpu_us"), ("bare-ws", key, "gateway_cpu_us"))
            for key in ("one", "many")
        ]
        out.append(
            "A bare WebSocket pair, in this run: two aiohttp processes that carry each request "
            "whole as one WebSocket message and make it with aiohttp's client "
            "(`bench/bare_tunnel.py`: no session, no tunnel, nothing resent or resumed) "
            f"reached {pair[0]} direct with 1 client, {pair[1]} with {many} clients and a "
            f"paced p50 of {pair[2]} direct, at {cell(cpus[0], '{:,.0f}')} and "
            f"{cell(cpus[1], '{:,.0f}')} us of CPU per request (1 and {many} clients); the "
            f"WebSocket hop's CPU per request was {cell(hop[0], 'x{:.2f}')} and "
            f"{cell(hop[1], 'x{:.2f}')} of that: what the session and tunnel cost on top."
        )
    return " ".join(out)


def _target_lines(res: Result) -> list[str]:
    lines = ["## Targets (issue 13)", "", "| item | target | measured | |", "|---|---|---|---|"]
    missed = []
    for item, text, measured, met in targets(res):
        mark = "not measured" if met is None else ("met" if met else "**missed**")
        lines.append(f"| {item} | {text} | {measured} | {mark} |")
        if met is False:
            missed.append((item, text))
    lines.append("")
    if missed:
        lines += ["### Why the missed targets are missed", ""]
        by_cause: dict[str, list[str]] = {}
        for item, text in missed:
            cause = next((c for key, c in CAUSES.items() if key in text), None)
            if cause and (floor := floor_sentence(res, item)):
                cause = floor + " " + cause
            fallback = "not profiled yet: run `python -m bench --profile ROW`."
            by_cause.setdefault(cause or fallback, []).append(text)
        for cause, texts in by_cause.items():
            lines.append(f"* {'; '.join(texts)}: {cause}")
        lines.append("")
    return lines


def poll_ahead_lines(section: Any) -> list[str]:
    if section is None:
        return []
    lines = ["## Poll-ahead (issue 14)", ""]
    if isinstance(section, dict) and "failed" in section:
        return [*lines, f"failed: {section['failed']}", ""]
    if isinstance(section, dict) and isinstance(section.get("markdown"), str):
        return [*lines, section["markdown"], ""]
    rows = section.get("rows") if isinstance(section, dict) else None
    if isinstance(rows, dict) and all(isinstance(r, dict) for r in rows.values()):
        rtt = section.get("rtt_ms")
        lines += [
            "From `bench/poll_ahead.py`" + (f", {rtt:.0f} ms RTT" if rtt else "") + ":",
            "",
            "| path | p50 ms | p99 ms | events |",
            "|---|---|---|---|",
        ]
        for name, r in rows.items():
            lines.append(
                f"| {name} | {cell(r.get('p50_ms'), '{:.1f}')} | {cell(r.get('p99_ms'), '{:.1f}')} "
                f"| {cell(r.get('events'))} |"
            )
        extra = {
            k: v for k, v in section.items() if k not in ("rows", "rtt_ms") and "samples" not in k
        }
        return [*lines, "", f"Other figures: `{extra}`" if extra else "", ""]
    shown = (
        {k: v for k, v in section.items() if "samples" not in k}
        if isinstance(section, dict)
        else section
    )
    return [*lines, "```", str(shown)[:3000], "```", ""]
