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
from gateway.config import SETTINGS, ConfigError, Role, Setting, build_config, load_toml
from gateway.demo import runner as demo_runner
from gateway.doctor import command as doctor_command
from gateway.process import event_loop_factory, serve

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
    sections: dict[str, argparse._ActionsContainer] = {"": parser}
    for setting in SETTINGS:
        if setting.group not in sections:
            sections[setting.group] = parser.add_argument_group(
                setting.group, GROUP_HELP.get(setting.group)
            )
        _add_flag(sections[setting.group], setting)


#: What each ``--help`` section is about.
GROUP_HELP = {
    "hop sessions": "the session between two gateways (or a page and a gateway)",
    "limits": "what one peer can make this gateway hold; the defaults are safe on a small "
    "machine (worst cases: docs/security.md)",
}

_FLAG_TYPES: dict[str, type] = {
    "seconds": float,
    "rate": float,
    "count": int,
    "bytes": int,
    "path": Path,
    "text": str,
}
_METAVARS = {"seconds": "SECONDS", "rate": "PER_SECOND", "count": "N", "bytes": "BYTES"}


def _add_flag(section: argparse._ActionsContainer, setting: Setting) -> None:
    """One flag of the settings table; ``None`` when not given, so a file or default applies."""
    common: dict[str, Any] = {"dest": setting.name, "help": setting.help}
    if setting.kind == "flag":
        section.add_argument(setting.option, action="store_true", default=None, **common)
    elif setting.kind == "choice":
        section.add_argument(setting.option, choices=setting.choices, **common)
    elif setting.kind == "origins":
        section.add_argument(setting.option, action="append", metavar=setting.metavar, **common)
    else:
        section.add_argument(
            setting.option,
            type=_FLAG_TYPES[setting.kind],
            metavar=setting.metavar or _METAVARS[setting.kind],
            **common,
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
    demo_runner.add_arguments(demo)
    doctor = commands.add_parser(
        "doctor",
        help=doctor_command.SHORT,
        description=doctor_command.DESCRIPTION,
        epilog=doctor_command.EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    doctor_command.add_arguments(doctor)
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
        return demo_runner.main(args)
    if args.command == "doctor":
        return doctor_command.main(args)
    try:
        config = build_config(args.command, settings_from_args(args))
        new_loop = event_loop_factory(config.event_loop)
    except ConfigError as exc:
        print(f"hopgate {args.command}: error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level)
    try:
        with asyncio.Runner(loop_factory=new_loop) as runner:
            runner.run(serve(config))
    except OSError as exc:
        print(f"hopgate {args.command}: error: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
