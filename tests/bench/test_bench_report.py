"""bench/suite_report.py: a failed row reads as failed, targets are marked from the figures."""

from __future__ import annotations

from typing import Any

from bench.suite_report import render, targets

SCALE = {"many": 100, "rate": 100.0, "rtt_s": 0.05, "idle_sessions": 10_000, "raw_sockets": 10_000,
         "held_polls": 2_000}  # fmt: skip
ENV = {"cpu": "cpu", "cores": "2", "kernel": "6", "python": "3.11", "aiohttp": "3", "engineio": "4",
       "tree": "/t", "commit": "abc"}  # fmt: skip


def results() -> dict[str, Any]:
    return {
        "scale_name": "full", "scale": SCALE, "environment": ENV, "started": "now", "took_s": 1.0,
        "messages": {
            "raw": {"burst": {"msg_s": 100_000.0}, "sizes": {"mb_s": {"65536": 1000.0}}},
            "eio-ws": {"turns": {"msg_s": 10_000.0}, "sizes": {"mb_s": {"65536": 500.0}}},
            "eio-poll": {"burst": {"failed": "TimeoutError: did not finish"}},
            "hop-ws": {"burst": {"msg_s": 95_000.0}, "turns": {"msg_s": 15_000.0, "cpu_us": 8.0},
                       "sizes": {"mb_s": {"65536": 700.0}}},
            "hop-lp": {"failed": "RuntimeError: boom"},
        },
        "legacy": {"direct": {"one": {"per_s": 1000.0}}, "websocket": {"one": {"per_s": 400.0}}},
        "memory": {"idle_session": {"kb_per": 20.0}},
    }  # fmt: skip


def test_targets_are_marked_from_the_figures() -> None:
    marks = {text: met for _item, text, _shown, met in targets(results())}
    assert marks["bursts over a WebSocket hop >= 0.9x raw aiohttp"] is True
    turns = "one message per loop turn, WebSocket hop >= 2x python-engineio WebSocket"
    assert marks[turns] is False
    assert marks["about <= 10 us CPU per message (server gateway)"] is True
    assert marks["legacy app through a websocket hop, 1 client >= 0.35x direct"] is True
    assert marks["RSS per idle hop session at 10,000 sessions <= 16 KB"] is False
    assert marks["64 KiB over a WebSocket hop >= 0.6x raw aiohttp"] is True
    assert marks["legacy app through a long-poll hop, 1 client >= 0.35x direct"] is None
    # A row that failed misses its target, it is not "not measured".
    assert (
        marks["64 KiB over a long-poll hop >= 1.0x python-engineio, >= 0.6x raw aiohttp"] is False
    )


def test_cpu_per_request_is_judged_at_each_load_against_plain_forwarding_at_that_load() -> None:
    res = results()
    res["legacy"] = {
        "plain": {"one": {"gateway_cpu_us": 500.0}, "many": {"gateway_cpu_us": 300.0}},
        "websocket": {"one": {"gateway_cpu_us": 700.0}, "many": {"gateway_cpu_us": 250.0}},
    }
    found = {text: (shown, met) for _item, text, shown, met in targets(res)}
    what = "gateway CPU per request through a websocket hop <= plain forwarding"
    assert found[f"{what}, 1 client"] == ("x1.40", False)
    assert found[f"{what}, 100 clients"] == ("x0.83", True)
    assert (
        found["gateway CPU per request through a long-poll hop <= plain forwarding, 1 client"][1]
        is None
    )
    page = render(res, [])
    assert "| gateway CPU per event, 100 clients, us (every gateway on the path) |" in page
    assert "| 300 | 250 |" in page


def test_page_says_what_failed_and_what_was_missed() -> None:
    page = render(results(), [])
    assert "did not finish" in page  # python-engineio polling's burst
    assert "failed (RuntimeError: boom)" in page
    assert "**missed**" in page and "| met |" in page
    assert "### Why the missed targets are missed" in page


def test_a_missed_per_request_target_quotes_the_floor_of_the_same_run() -> None:
    res = results()
    res["legacy"] = {
        "direct": {"one": {"per_s": 1000.0}, "many": {"per_s": 4000.0}, "paced": {"p50_ms": 4.0}},
        "relays": {"one": {"per_s": 550.0}, "many": {"per_s": 2200.0}, "paced": {"p50_ms": 5.0}},
        "edges": {
            "one": {"per_s": 450.0, "gateway_cpu_us": 321.0},
            "many": {"per_s": 1600.0},
            "paced": {"p50_ms": 7.0},
        },
        "bare-ws": {
            "one": {"per_s": 300.0, "gateway_cpu_us": 400.0},
            "many": {"per_s": 1800.0, "gateway_cpu_us": 150.0},
            "paced": {"p50_ms": 6.0},
        },
        "websocket": {
            "one": {"per_s": 200.0, "gateway_cpu_us": 600.0},
            "many": {"per_s": 1000.0, "gateway_cpu_us": 180.0},
        },
    }
    page = render(res, [])
    header = (
        "| case | direct | two bare TCP relays | one gateway, no hop | bare WebSocket pair "
        "| plain hop (no tunnel) | WebSocket hop |"
    )
    assert header in page
    assert "| 550 (x0.55) | 450 (x0.45) | 300 (x0.30) |" in page
    why = next(line for line in page.splitlines() if line.startswith("* legacy app through"))
    assert "x0.55 direct with 1 client" in why, why
    assert "x0.55 with 100 clients" in why and "paced p50 of x1.25 direct" in why, why
    edges = why[why.index("The edges alone") :]
    assert "x0.45 direct with 1 client, x0.40 with 100 clients" in edges, why
    assert "paced p50 of x1.75 direct, at 321 us of CPU per request" in edges, why
    pair = why[why.index("A bare WebSocket pair") :]
    assert "x0.30 direct with 1 client, x0.45 with 100 clients" in pair, why
    assert "paced p50 of x1.50 direct, at 400 and 150 us of CPU per request" in pair, why
    assert "CPU per request was x1.50 and x1.20 of that" in pair, why
    # Without the floor rows (an older run) the cause stands alone.
    del res["legacy"]["relays"], res["legacy"]["edges"], res["legacy"]["bare-ws"]
    page = render(res, [])
    assert "The floor, in this run" not in page and "The edges alone" not in page
    assert "A bare WebSocket pair" not in page


def test_a_missed_64_kib_target_quotes_the_relayed_raw_rate_of_the_same_run() -> None:
    res = results()
    res["messages"]["raw-relay"] = {
        "burst": {"msg_s": 60_000.0},
        "sizes": {"mb_s": {"65536": 450.0}},
    }
    page = render(res, [])
    assert "| raw aiohttp WebSocket | raw aiohttp WebSocket through a bare TCP relay |" in page
    assert "| 450 (x0.45) |" in page  # 64 KiB row, against raw's 1000 MB/s
    assert "| 60,000 (x0.60) |" in page  # burst row
    why = next(line for line in page.splitlines() if line.startswith("* 64 KiB over a long-poll"))
    assert "moved 64 KiB messages at x0.45 raw aiohttp" in why and "x0.90 python-engineio" in why
    assert "A relay made of aiohttp's WebSocket" not in why  # not in this run


def test_a_missed_64_kib_target_quotes_the_bare_websocket_relay_and_the_hop_against_it() -> None:
    res = results()
    res["messages"]["raw-relay"] = {"sizes": {"mb_s": {"65536": 450.0}}}
    res["messages"]["raw-ws-relay"] = {
        "burst": {"msg_s": 50_000.0},
        "rtt": {"p50_us": 150.0, "p99_us": 210.0},
        "sizes": {"mb_s": {"65536": 400.0}},
    }
    page = render(res, [])
    assert "| raw aiohttp WebSocket through a bare WebSocket relay |" in page
    assert "| 400 (x0.40) |" in page and "| 50,000 (x0.50) |" in page and "| 150 / 210 |" in page
    why = next(line for line in page.splitlines() if line.startswith("* 64 KiB over a long-poll"))
    relay = why[why.index("A relay made of aiohttp's WebSocket") :]
    assert "moved them at x0.40 raw aiohttp and x0.80 python-engineio" in relay, why
    assert "the WebSocket hop at x1.75 of that relay" in relay, why  # 700 MB/s against 400
