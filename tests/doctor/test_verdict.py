"""``gateway.doctor.verdict``: findings in, verdict and advice out (no I/O, no event loop)."""

from __future__ import annotations

import json
from dataclasses import replace

from gateway.doctor.verdict import Findings, judge, render_human, render_json

#: A direct path to a healthy gateway, as the probes report it.
HEALTHY = Findings(
    url="http://gw.example/",
    connect_ms=0.5,
    request_status=200,
    hello_status=200,
    hello_proof=True,
    session_path="/.hopgate/session",
    session_status=200,
    session_created=True,
    upgrade_status=101,
    upgrade_headers={"upgrade": "websocket", "connection": "upgrade"},
    subprotocol_echoed=True,
    probe_ms=0.4,
    pong_delays=(0.001, 0.001, 0.001, 0.001, 0.001),
    ping_span=0.8,
    big_up_bytes=1 << 20,
    big_up_ms=15.0,
    down_status=200,
    down_bytes=1 << 20,
    down_ms=12.0,
    long_poll_ms=30.0,
)


def test_healthy_path_needs_nothing() -> None:
    report = judge(HEALTHY)
    assert (report.websocket, report.long_poll, report.idle_timeout_s) == ("ok", "ok", None)
    assert report.exit_code == 0
    assert report.advice == ("nothing to change",)
    assert all(step.ok for step in report.steps)


def test_stripped_upgrade_behind_nginx_names_the_lines() -> None:
    report = judge(
        replace(
            HEALTHY,
            upgrade_status=400,
            upgrade_headers={"x-hopgate-error": "1", "content-type": "text/plain"},
            server="nginx/1.22.1",
            subprotocol_echoed=False,
            probe_ms=None,
            pong_delays=(),
        )
    )
    assert report.websocket == "refused"
    assert report.long_poll == "ok" and report.exit_code == 0
    text = " ".join(report.advice)
    assert 'proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection "upgrade";' in text
    assert "HAProxy" not in text  # the answers named nginx
    assert "reached the gateway as a plain GET" in report.advice[0]


def test_a_proxy_answering_the_handshake_itself_is_told_apart() -> None:
    refused = dict(upgrade_headers={}, subprotocol_echoed=False, probe_ms=None, pong_delays=())
    report = judge(replace(HEALTHY, upgrade_status=403, **refused))  # type: ignore[arg-type]
    assert report.websocket == "refused"
    assert "before the gateway answered the handshake itself (403" in report.advice[0]
    fake = replace(HEALTHY, subprotocol_echoed=False, upgrade_error="invalid 101: Bad accept token")
    assert judge(fake).websocket == "refused" and "not the gateway's" in judge(fake).advice[0]


def test_a_101_whose_frames_never_flow_is_blocked() -> None:
    report = judge(replace(HEALTHY, probe_ms=None, probe_error="no answer to the probe"))
    assert report.websocket == "blocked"
    assert "buffers or filters" in report.advice[0]


def test_pongs_arriving_together_late_mean_buffering() -> None:
    # A relay flushing once a second: the first PONG waits, the rest ride with it.
    report = judge(replace(HEALTHY, pong_delays=(0.95, 0.75, 0.55, 0.35, 0.15)))
    assert report.bursty and report.websocket == "ok"
    assert any("bursts" in line for line in report.advice)
    slow_but_steady = replace(HEALTHY, pong_delays=(0.3, 0.31, 0.3, 0.29, 0.3))
    assert not judge(slow_but_steady).bursty


def test_idle_kill_gives_the_timeout_and_a_heartbeat_below_it() -> None:
    report = judge(replace(HEALTHY, idle_test_s=6.0, idle_killed_after=3.04, server="haproxy"))
    assert report.idle_timeout_s == 3.0
    text = " ".join(report.advice)
    assert "timeout tunnel" in text and "--heartbeat 2" in text
    assert report.exit_code == 0


def test_no_gateway_exits_1_and_says_what_to_run() -> None:
    report = judge(
        Findings(
            url="http://legacy/",
            connect_ms=0.3,
            request_status=200,
            hello_status=404,
            session_status=404,
            session_error="POST /.hopgate/session: 404",
        )
    )
    assert report.exit_code == 1
    assert (report.websocket, report.long_poll, report.gateway) == ("refused", "failed", False)
    assert "hopgate server" in report.advice[0]


def test_unreachable_and_untrusted_certificate_exit_1() -> None:
    down = judge(Findings(url="http://x/", connect_error="cannot connect: refused"))
    assert down.exit_code == 1 and "refused" in down.advice[0]
    bad_tls = judge(replace(HEALTHY, tls=True, tls_error="certificate verification failed"))
    assert bad_tls.exit_code == 1 and "--ca-file" in bad_tls.advice[0]


def test_hop_secret_refusal_says_which_flag() -> None:
    report = judge(
        replace(
            HEALTHY,
            session_created=False,
            session_status=403,
            session_error="wrong hop secret",
            long_poll_ms=None,
        )
    )
    assert report.exit_code == 1 and "--hop-secret" in report.advice[0]


def test_renderings_carry_the_interface_keys() -> None:
    report = judge(replace(HEALTHY, idle_test_s=5.0))
    data = json.loads(render_json(report))
    assert {"websocket", "long_poll", "idle_timeout_s", "steps", "exit_code"} <= data.keys()
    assert [s["name"] for s in data["steps"]][-1] == "idle"
    lines = render_human(report).splitlines()
    assert len(lines) == 1 + len(report.steps) + 1 + len(report.advice)
    assert lines[-2].startswith("verdict: hop sessions run on WebSocket")
