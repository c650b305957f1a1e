"""``hopgate`` command line: builds a ``Config`` and hands it to ``serve``.

``main(argv)`` returns an exit status instead of exiting so tests can call it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway import __version__
from gateway.config import LOG_LEVELS, ConfigError, Role, build_config, load_toml

DESCRIPTION = """\
hopgate: a transparent long-poll <-> WebSocket upgrading gateway.

Put `hopgate server` beside a legacy long-poll (Comet) server and `hopgate
client` beside a legacy client.  Each speaks plain HTTP to its neighbour; the
hop between two gateways is upgraded to a WebSocket when both ends are
gateways and the path allows it, and stays on HTTP long-polling when not.
"""

EPILOG = """\
examples:
  hopgate server --listen 0.0.0.0:8080 --upstream http://127.0.0.1:9000
  hopgate client --listen 127.0.0.1:8000 --upstream https://chat.example.com
  hopgate client --listen 127.0.0.1:3128          # forward proxy: http_proxy=...
  hopgate demo                                    # everything on loopback, live
"""

ROLE_HELP = {
    "server": (
        "sidecar in front of a legacy long-poll server",
        "Run beside a legacy Comet/long-poll server.  Legacy clients and client "
        "gateways connect here; requests go to --upstream, and only there.",
    ),
    "client": (
        "local proxy in front of a legacy client",
        "Run beside a legacy client.  With --upstream it is a reverse proxy the "
        "client connects to as if it were the server; without --upstream it is "
        "an HTTP forward proxy (set http_proxy to its address; CONNECT is passed "
        "through).",
    ),
}


def _add_gateway_flags(parser: argparse.ArgumentParser, role: Role) -> None:
    default_port = 8080 if role == "server" else 8000
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help='TOML file whose keys mirror these flags (e.g. upstream = "http://..."); '
        "flags given here win",
    )
    parser.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help=f"address to accept connections on (default 127.0.0.1:{default_port}; "
        "port 0 picks a free one; use 0.0.0.0:PORT to accept from other machines)",
    )
    parser.add_argument(
        "--upstream",
        metavar="URL",
        help="where requests go: the legacy server, or the next gateway "
        + ("(required)" if role == "server" else "(omit for forward-proxy mode)"),
    )
    parser.add_argument(
        "--upgrade",
        choices=("auto", "never"),
        help="auto (default): upgrade the hop to the next gateway to a WebSocket or "
        "long-poll session when it is a gateway; never: plain HTTP forwarding only",
    )
    parser.add_argument("--log-level", choices=LOG_LEVELS, help="how much to log (default info)")
    parser.add_argument(
        "--tls-cert", type=Path, metavar="PEM", help="listen with TLS: certificate chain"
    )
    parser.add_argument("--tls-key", type=Path, metavar="PEM", help="listen with TLS: private key")
    parser.add_argument(
        "--ca-file",
        type=Path,
        metavar="PEM",
        help="extra CA certificates trusted for https:// upstreams (system CAs still apply)",
    )
    parser.add_argument(
        "--upstream-timeout",
        type=float,
        metavar="SECONDS",
        help="longest wait for the next byte from upstream, so held polls survive (default 600)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        metavar="SECONDS",
        help="upstream connect timeout (default 10)",
    )
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        metavar="SECONDS",
        help="on SIGINT/SIGTERM, time held requests get to finish (default 10)",
    )
    parser.add_argument(
        "--preserve-host",
        action="store_true",
        default=None,
        help="send the client's Host header upstream instead of the upstream's host",
    )
    parser.add_argument(
        "--via-name", metavar="NAME", help="name used in the Via header (default hopgate)"
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        metavar="N",
        help="origin connections the whole gateway holds at once; requests beyond wait "
        "up to --connect-timeout (default 1024; 0 = unlimited)",
    )
    parser.add_argument(
        "--hop-secret",
        metavar="SECRET",
        help="shared secret both gateways of a hop must know before a session is opened",
    )
    parser.add_argument(
        "--hop-secret-file",
        type=Path,
        metavar="FILE",
        help="read the hop secret from FILE (keeps it out of the command line and "
        "of a world-readable config; surrounding whitespace is ignored)",
    )
    parser.add_argument(
        "--hold-time",
        type=float,
        metavar="SECONDS",
        help="hop sessions: longest a long-poll GET is held (default 25; keep under 30)",
    )
    parser.add_argument(
        "--resume-grace",
        type=float,
        metavar="SECONDS",
        help="hop sessions: how long a session waits for its peer to reconnect (default 60)",
    )
    parser.add_argument(
        "--max-sessions",
        type=int,
        metavar="N",
        help="hop sessions this gateway serves at once; more get 503 (default 1000)",
    )
    parser.add_argument(
        "--max-message-size",
        type=int,
        metavar="BYTES",
        help="largest message a hop session carries (default 16777216)",
    )
    parser.add_argument(
        "--session-buffer",
        type=int,
        metavar="BYTES",
        help="replay buffer per hop session; senders wait beyond it (default 4194304)",
    )
    limits = parser.add_argument_group(
        "limits",
        "what one peer can make this gateway hold; the defaults are safe on a small "
        "machine (worst cases: docs/security.md)",
    )
    limits.add_argument(
        "--max-clients",
        type=int,
        metavar="N",
        help="inbound connections held at once; more are closed at once "
        "(default 0 = derived from the open-file limit)",
    )
    limits.add_argument(
        "--header-timeout",
        type=float,
        metavar="SECONDS",
        help="a request head must arrive in full within this long (default 10)",
    )
    limits.add_argument(
        "--keepalive-timeout",
        type=float,
        metavar="SECONDS",
        help="close an idle keep-alive connection after this long (default 75)",
    )
    limits.add_argument(
        "--public-status",
        action="store_true",
        default=None,
        help="serve /.hopgate/status details to any client, not only to loopback ones",
    )
    limits.add_argument(
        "--max-streams",
        type=int,
        metavar="N",
        help="streams (tunnelled requests and WebSockets) one hop session may have open "
        "(default 256)",
    )
    limits.add_argument(
        "--session-connections",
        type=int,
        metavar="N",
        help="origin connections one hop session may hold; its further streams wait "
        "(default 128)",
    )
    limits.add_argument(
        "--session-reassembly",
        type=int,
        metavar="BYTES",
        help="bytes of unfinished WebSocket messages one hop session may hold "
        "(default 16777216)",
    )
    limits.add_argument(
        "--max-unread-bytes",
        type=int,
        metavar="BYTES",
        help="response bytes read from the origin but not yet taken by the peer, per hop "
        "session; reading from the origin pauses beyond it (default 4194304)",
    )
    limits.add_argument(
        "--max-session-posts",
        type=int,
        metavar="N",
        help="long-poll POSTs one hop session may have in flight; more get 429 (default 4)",
    )
    limits.add_argument(
        "--max-sessions-per-client",
        type=int,
        metavar="N",
        help="hop sessions one client address may hold at once (default 100; 0 = no limit)",
    )
    limits.add_argument(
        "--session-create-rate",
        type=float,
        metavar="PER_SECOND",
        help="new hop sessions per second one client address may open, in bursts of the "
        "same size (default 10)",
    )
    parser.add_argument(
        "--allowed-origin",
        dest="allowed_origins",
        action="append",
        metavar="ORIGIN",
        help="browser Origin allowed to open sessions (repeatable; default same origin)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hopgate",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hopgate {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for role, (short, long) in ROLE_HELP.items():
        sub = commands.add_parser(role, help=short, description=long)
        _add_gateway_flags(sub, role)  # type: ignore[arg-type]
    demo = commands.add_parser(
        "demo",
        help="run a legacy chat app through two gateways on loopback, live",
        description="Start a legacy long-poll chat server, a sidecar gateway, a client "
        "gateway and a few legacy chat clients, all on 127.0.0.1, and show the "
        "messages, their latency and each hop's transport until Ctrl-C.",
    )
    from gateway.demo.runner import add_arguments

    add_arguments(demo)
    return parser


def settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Settings from ``--config`` overlaid with the flags actually given."""
    settings: dict[str, Any] = load_toml(args.config) if args.config else {}
    for key, value in vars(args).items():
        if key in ("command", "config") or value is None:
            continue
        settings[key] = value
    return settings


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    if level != "debug":
        logging.getLogger("hopgate.access").setLevel(
            logging.WARNING if level != "info" else logging.INFO
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "demo":
        from gateway.demo.runner import main as demo_main

        return demo_main(args)
    try:
        config = build_config(args.command, settings_from_args(args))
    except ConfigError as exc:
        print(f"hopgate {args.command}: error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level)
    from gateway.server import serve

    try:
        asyncio.run(serve(config))
    except OSError as exc:
        print(f"hopgate {args.command}: error: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
