"""From what the probes saw to a verdict and the lines to change (pure: no I/O, no clock).

``Findings`` is everything ``probe`` measured, as plain values; ``judge``
turns it into ``Report``: one ``Step`` per stage (a check or a cross and its
figure), the three headline answers (``websocket``: ok / refused / blocked,
``long_poll``: ok / failed, ``idle_timeout_s``), the exit status and the
advice. Keeping this apart from the sockets lets the tests feed it any
combination of findings.

How the WebSocket answer is decided: the upgrade is *refused* when no ``101``
came back (a proxy that strips ``Upgrade``/``Connection`` makes the gateway
answer an ordinary request, ``400`` or ``404``; some answer ``426`` or
``200``), or when the ``101`` is not the gateway's (no valid
``Sec-WebSocket-Accept`` or no ``hopgate.v1`` echo). It is *blocked* when the
``101`` came but session frames did not flow both ways (the probe went
unanswered: a buffering or filtering intermediary). A gateway cannot echo the
request headers it received on a ``101`` (that would need a protocol change),
so which headers were stripped is inferred from the answer: a non-``101``
carrying the gateway's ``X-Hopgate-Error`` means the handshake reached it as
a plain GET (``Upgrade``/``Connection`` stripped on the way); any other
non-``101`` was answered by something in front of it. When no session opens
at all, neither transport can carry a hop: ``websocket`` is reported
``refused`` and ``long_poll`` ``failed``, and the exit status is 1.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Literal

__all__ = ["Findings", "Report", "Step", "judge", "render_human", "render_json"]

WebSocketAnswer = Literal["ok", "refused", "blocked"]

NGINX_LINES = (
    "proxy_http_version 1.1;",
    "proxy_set_header Upgrade $http_upgrade;",
    'proxy_set_header Connection "upgrade";',
)


@dataclass(frozen=True, kw_only=True)
class Findings:
    """What each step measured; ``None`` where the step did not run or saw nothing."""

    url: str
    tls: bool = False
    connect_ms: float | None = None
    connect_error: str | None = None
    tls_error: str | None = None
    #: The ordinary request to the URL's path.
    request_status: int | None = None
    request_error: str | None = None
    server: str | None = None
    via: str | None = None
    #: The marked ordinary request came back with a gateway's hop-by-hop note.
    note_seen: bool = False
    hello_status: int | None = None
    hello_proof: bool = False
    session_path: str | None = None
    session_status: int | None = None
    session_error: str | None = None
    session_created: bool = False
    upgrade_status: int | None = None
    upgrade_error: str | None = None
    #: The start of a refusal's body (who refused and why), one line.
    upgrade_body: str = ""
    #: Response headers of the upgrade that tell what the path did (Upgrade, Connection, ...).
    upgrade_headers: Mapping[str, str] = field(default_factory=dict)
    subprotocol_echoed: bool = False
    probe_ms: float | None = None
    probe_error: str | None = None
    #: Seconds after sending each small PING that its PONG arrived (None: never).
    pong_delays: tuple[float | None, ...] = ()
    #: Seconds between the first and the last PING sent.
    ping_span: float = 0.0
    big_up_bytes: int = 0
    big_up_ms: float | None = None
    down_status: int | None = None
    down_bytes: int = 0
    down_ms: float | None = None
    long_poll_ms: float | None = None
    long_poll_error: str | None = None
    idle_test_s: float | None = None
    #: Seconds of silence after which the path closed the idle WebSocket (None: it survived).
    idle_killed_after: float | None = None
    idle_closed_by: str | None = None
    #: The longest silence the idle WebSocket lived through (the gateway's heartbeat breaks it).
    idle_longest_silence: float | None = None


@dataclass(frozen=True, kw_only=True)
class Step:
    name: str
    #: True passed, False failed, None did not run.
    ok: bool | None
    figure: str


@dataclass(frozen=True, kw_only=True)
class Report:
    url: str
    steps: tuple[Step, ...]
    gateway: bool
    websocket: WebSocketAnswer
    long_poll: Literal["ok", "failed"]
    idle_timeout_s: float | None
    bursty: bool
    proxy: str | None
    verdict: str
    advice: tuple[str, ...]
    exit_code: int
    findings: Findings


def websocket_answer(f: Findings) -> WebSocketAnswer:
    if f.upgrade_status != 101 or not f.subprotocol_echoed or f.upgrade_error:
        return "refused"
    if f.probe_ms is None:
        return "blocked"
    if f.pong_delays and all(d is None for d in f.pong_delays):
        return "blocked"
    return "ok"


#: PONGs of PINGs sent this far apart (or more) that arrive closer than this came in one burst.
_TOGETHER = 0.25


def is_bursty(f: Findings) -> bool:
    """PINGs went out spread over ``ping_span``; most PONGs arrived bunched (a buffering hop).

    Arrival times are rebuilt from the even spacing of the PINGs; on a
    clean path consecutive PONGs arrive as far apart as their PINGs left.
    """
    n = len(f.pong_delays)
    if n < 3 or f.ping_span <= 0 or any(d is None for d in f.pong_delays):
        return False
    gap = f.ping_span / (n - 1)
    arrivals = [i * gap + (d or 0.0) for i, d in enumerate(f.pong_delays)]
    bunched = sum(1 for a, b in itertools.pairwise(arrivals) if b - a < gap * _TOGETHER)
    return bunched * 2 >= n - 1


def proxy_kind(f: Findings) -> str | None:
    """Which intermediary the answers name (Server / Via), if any."""
    for value in (f.server or "", f.via or ""):
        low = value.lower()
        for kind in ("nginx", "haproxy", "squid", "envoy", "cloudflare", "apache", "varnish"):
            if kind in low:
                return kind
    if f.via and any("hopgate" not in hop.lower() for hop in f.via.split(",")):
        return "a proxy"
    return None


def judge(f: Findings) -> Report:
    ws = websocket_answer(f) if f.session_created else "refused"
    poll: Literal["ok", "failed"] = "ok" if f.long_poll_ms is not None else "failed"
    bursty = ws == "ok" and is_bursty(f)
    # A client gateway refuses an untrusted certificate: whatever ran after it does not count.
    opened = f.session_created and not f.tls_error and (ws == "ok" or poll == "ok")
    idle = f.idle_killed_after if ws == "ok" else None
    advice = _advice(f, ws, poll, bursty, idle)
    return Report(
        url=f.url,
        steps=_steps(f, ws, bursty),
        gateway=f.hello_proof or f.session_created,
        websocket=ws,
        long_poll=poll,
        idle_timeout_s=None if idle is None else round(idle, 1),
        bursty=bursty,
        proxy=proxy_kind(f),
        verdict=_verdict(f, ws, poll, opened),
        advice=tuple(advice),
        exit_code=0 if opened else 1,
        findings=f,
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _steps(f: Findings, ws: WebSocketAnswer, bursty: bool) -> tuple[Step, ...]:
    steps = [
        Step(name="tcp", ok=f.connect_ms is not None, figure=f.connect_error or _ms(f.connect_ms))
    ]
    if f.tls:
        ok = f.connect_ms is not None and f.tls_error is None
        steps.append(Step(name="tls", ok=ok, figure=f.tls_error or "certificate verified"))
    steps.append(_request_step(f))
    proof = "proof ok" if f.hello_proof else "no proof (not a gateway, or not reached)"
    steps.append(
        Step(
            name="hello",
            ok=f.hello_proof if f.hello_status else None,
            figure=f"{f.hello_status or '-'}: {proof}",
        )
    )
    steps.append(
        Step(
            name="session",
            ok=f.session_created if f.session_status or f.session_error else None,
            figure=f.session_error or f"POST {f.session_path or '-'}: {f.session_status}",
        )
    )
    steps.append(_upgrade_step(f))
    steps.append(_frames_step(f, ws, bursty))
    steps.append(
        Step(
            name="long_poll",
            ok=f.long_poll_ms is not None if f.session_created else None,
            figure=f.long_poll_error
            or f"tunnelled GET over held poll + POST: {_ms(f.long_poll_ms)}",
        )
    )
    if f.idle_test_s is not None:
        steps.append(_idle_step(f))
    return tuple(steps)


def _request_step(f: Findings) -> Step:
    if f.request_status is None:
        return Step(
            name="request", ok=False if f.connect_ms else None, figure=f.request_error or "-"
        )
    extra = [f"server: {f.server}"] if f.server else []
    extra += [f"via: {f.via}"] if f.via else []
    extra += ["gateway note came back (hop-by-hop headers pass)"] if f.note_seen else []
    figure = ", ".join([f"{f.request_status}", *extra])
    return Step(name="request", ok=f.request_status < 500, figure=figure)


def _upgrade_step(f: Findings) -> Step:
    if f.upgrade_status is None:
        ok = None if not f.session_created else False
        return Step(name="upgrade", ok=ok, figure=f.upgrade_error or "-")
    got = ", ".join(f"{k}: {v}" for k, v in f.upgrade_headers.items()) or "no Upgrade/Connection"
    echo = (
        ""
        if f.upgrade_status != 101
        else (", hopgate.v1 echoed" if f.subprotocol_echoed else ", no hopgate.v1 echo")
    )
    error = f" ({f.upgrade_error})" if f.upgrade_error else ""
    if f.upgrade_body:
        error += f'; body: "{f.upgrade_body}"'

    ok = f.upgrade_status == 101 and f.subprotocol_echoed and not f.upgrade_error
    return Step(name="upgrade", ok=ok, figure=f"{f.upgrade_status}{echo}; {got}{error}")


def _frames_step(f: Findings, ws: WebSocketAnswer, bursty: bool) -> Step:
    if f.upgrade_status != 101:
        return Step(name="frames", ok=None, figure="-")
    if f.probe_ms is None:
        return Step(name="frames", ok=False, figure=f.probe_error or "probe unanswered")
    got = [d for d in f.pong_delays if d is not None]
    pongs = f"{len(got)}/{len(f.pong_delays)} pongs"
    if got:
        pongs += f" (max {max(got) * 1000:.0f} ms{', in one burst' if bursty else ''})"
    up = f"1 MiB up acked in {_ms(f.big_up_ms)}" if f.big_up_ms else "1 MiB up not acked"
    down = (
        f"{f.down_bytes} B down ({f.down_status}) in {_ms(f.down_ms)}"
        if f.down_ms is not None
        else "tunnelled GET unanswered"
    )
    figure = f"probe {_ms(f.probe_ms)}, {pongs}, {up}, {down}"
    ok = ws == "ok" and not bursty and f.big_up_ms is not None and f.down_ms is not None
    return Step(name="frames", ok=ok, figure=figure)


def _idle_step(f: Findings) -> Step:
    if f.probe_ms is None:
        return Step(name="idle", ok=None, figure="not run: no working WebSocket")
    if f.idle_killed_after is None:
        if f.idle_closed_by:
            return Step(name="idle", ok=None, figure=f.idle_closed_by)
        figure = f"idle WebSocket alive after {f.idle_test_s:g} s"
        longest = f.idle_longest_silence
        if longest is not None and f.idle_test_s and longest < 0.9 * f.idle_test_s:
            figure += (
                f"; the gateway's heartbeat broke the silence: longest {longest:.1f} s "
                "(a path idle limit above that cannot show)"
            )
        return Step(name="idle", ok=True, figure=figure)
    by = f" ({f.idle_closed_by})" if f.idle_closed_by else ""
    return Step(
        name="idle",
        ok=False,
        figure=f"path closed the idle WebSocket after {f.idle_killed_after:.1f} s{by}",
    )


def _verdict(f: Findings, ws: WebSocketAnswer, poll: str, opened: bool) -> str:
    if f.connect_ms is None:
        return "cannot reach the URL"
    if f.tls and f.tls_error:
        return "the TLS certificate is not trusted"
    if not f.session_created:
        if f.hello_proof:
            return "a gateway answers, but it opens no session for us"
        return "no hopgate gateway at this URL"
    if ws == "ok":
        return "hop sessions run on WebSocket" + (" (long-poll works too)" if poll == "ok" else "")
    if opened:
        return f"hop sessions fall back to long-poll: the WebSocket is {ws}"
    return "a session opens, but neither transport carries it"


def _advice(
    f: Findings, ws: WebSocketAnswer, poll: str, bursty: bool, idle: float | None
) -> list[str]:
    if f.connect_ms is None:
        return [f"check the host and port, DNS and firewalls: {f.connect_error}"]
    if f.tls and f.tls_error:
        return [
            "the server's certificate chain does not verify: fix the chain, or pass "
            "--ca-file with the CA that signed it"
        ]
    if not f.session_created:
        return _no_session_advice(f)
    advice: list[str] = []
    proxy = proxy_kind(f)
    if ws == "refused":
        advice += _refused_advice(f, proxy)
    elif ws == "blocked":
        advice.append(
            "the 101 came back but session frames did not flow: an intermediary buffers or "
            "filters WebSocket frames (antivirus, DLP, a TLS-inspecting proxy); exempt this "
            "host from inspection. Hop sessions stay on long-poll meanwhile."
        )
    if bursty:
        advice.append(
            "frames arrive in bursts: something on the path buffers the upgraded connection; "
            "latency suffers until it is exempted (nginx: proxy_buffering off is not enough "
            "for a tunnel; look for an inspecting proxy)"
        )
    if poll != "ok":
        advice.append(
            "the long-poll round trip failed: a proxy must let a request be held for the "
            "gateway's --hold-time (25 s) and pass POST bodies unbuffered "
            "(nginx: proxy_read_timeout 60s or more; proxy_request_buffering off)"
        )
    if idle is not None:
        advice += _idle_advice(idle, proxy)
    if not advice:
        advice.append("nothing to change")
    return advice


def _no_session_advice(f: Findings) -> list[str]:
    if f.session_status == 403:
        return [
            "the gateway wants the hop secret: pass --hop-secret or --hop-secret-file "
            f"(it said: {f.session_error})"
        ]
    if f.session_status in (429, 503):
        return [f"the gateway is full or rate-limits us ({f.session_status}); try again later"]
    if f.hello_proof:
        return [f"the gateway proved itself but refused a session: {f.session_error}"]
    where = f" (the answers name {proxy_kind(f)})" if proxy_kind(f) else ""
    return [
        f"nothing at {f.url} speaks hopgate{where}: run `hopgate server --upstream ORIGIN` "
        "there, or point the reverse proxy at the gateway instead of the origin; a hop "
        "then stays plain HTTP (legacy) and nothing is upgraded"
    ]


def _refusal(f: Findings) -> str:
    """Who refused the upgrade, read from the answer (a gateway marks its errors)."""
    status = f.upgrade_status
    if status is None:
        return f"the WebSocket handshake got no answer ({f.upgrade_error})"
    if status == 101:
        return (
            "a 101 came back that is not the gateway's (no valid Sec-WebSocket-Accept or no "
            f"hopgate.v1 echo{': ' + f.upgrade_error if f.upgrade_error else ''}): "
            "an intermediary answers WebSocket handshakes itself"
        )
    if "x-hopgate-error" in {k.lower() for k in f.upgrade_headers}:
        return (
            f"the handshake reached the gateway as a plain GET (it answered {status}): "
            "a proxy stripped the hop-by-hop Upgrade and Connection headers"
        )
    return (
        f"something before the gateway answered the handshake itself ({status}, not the "
        "gateway's answer): it does not pass WebSocket upgrades"
    )


def _refused_advice(f: Findings, proxy: str | None) -> list[str]:
    lines = [_refusal(f)]
    if proxy in (None, "nginx"):
        lines.append(
            "nginx: in the location that proxies to the gateway, add: "
            + " ".join(NGINX_LINES)
            + " (deploy/nginx/hopgate-websocket.conf)"
        )
    if proxy in (None, "haproxy"):
        lines.append(
            "HAProxy: use `mode http` (it passes upgrades by itself), not an "
            "HTTP/1.0 or `option httpclose` backend"
        )
    if proxy not in (None, "nginx", "haproxy"):
        lines.append(f"{proxy}: enable WebSocket (Upgrade) pass-through for this route")
    return lines


def _idle_advice(idle: float, proxy: str | None) -> list[str]:
    beat = max(2.0, idle / 2)
    lines = [
        f"the path closes a WebSocket idle for about {idle:.0f} s: a client gateway learns "
        "this after two such deaths and heartbeats below it; to skip the lesson start at "
        f"hopgate client --heartbeat {beat:.0f}, or raise the proxy's idle timeout"
    ]
    if proxy in (None, "haproxy"):
        lines.append("HAProxy: timeout tunnel 1h (the idle limit of upgraded connections)")
    if proxy in (None, "nginx"):
        lines.append("nginx: proxy_read_timeout 3600s; proxy_send_timeout 3600s;")
    return lines


def render_human(report: Report) -> str:
    marks = {True: "\u2714", False: "\u2718", None: "-"}
    lines = [f"hopgate doctor {report.url}"]
    lines += [f"  {marks[s.ok]} {s.name:<9} {s.figure}" for s in report.steps]
    lines.append(
        f"verdict: {report.verdict} (websocket {report.websocket}, "
        f"long-poll {report.long_poll}, idle timeout "
        f"{'none seen' if report.idle_timeout_s is None else f'{report.idle_timeout_s:g} s'})"
    )
    lines += [f"  - {a}" for a in report.advice]
    return "\n".join(lines)


def render_json(report: Report) -> str:
    data = asdict(report)
    data["steps"] = [asdict(s) for s in report.steps]
    return json.dumps(data, indent=2)
