"""``hopgate`` command line: builds a ``Config`` and hands it to ``serve``.

``main(argv)`` returns an exit status instead of exiting so tests can call it.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway import __version__
from gateway.config import SETTINGS, ConfigError, Role, Setting
from gateway.config_sources import CONFIG_VARIABLE, gather, load_config
from gateway.demo import runner as demo_runner
from gateway.doctor import command as doctor_command
from gateway.logs import say, setup_logging
from gateway.process import event_loop_factory, serve, tune_gc, tune_malloc

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
        help='TOML file whose keys are these flags\' long names (upstream = "http://...", '
        f"upstream-timeout = 900); flags and HOPGATE_ variables win (default ${CONFIG_VARIABLE})",
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


SOURCES_EPILOG = """\
environment:
  every flag can also be set as HOPGATE_<FLAG>: the long flag name upper-cased,
  "-" as "_" (HOPGATE_UPSTREAM, HOPGATE_LISTEN, HOPGATE_HOP_SECRET_FILE, ...);
  HOPGATE_CONFIG names the config file.  Booleans take 1/0, true/false,
  yes/no, on/off; a repeatable flag takes its values separated by commas or
  spaces (HOPGATE_ALLOWED_ORIGIN="https://a.example https://b.example").
  Precedence: flag > environment > config file > default.

config file (--config FILE, TOML):
  the keys are the long flag names, the values the flags' shapes:
    upstream = "http://127.0.0.1:9000"
    upstream-timeout = 900
    preserve-host = true
    allowed-origin = ["https://app.example"]
"""


class CommandParser(argparse.ArgumentParser):
    """A subcommand's parser: an unknown flag is reported with this command's usage.

    argparse hands a subcommand's unknown arguments back to the top-level
    parser, which would print ``usage: hopgate [-h] ...`` for
    ``hopgate server --bogus``.
    """

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            flags = [name for name in self._option_string_actions if name.startswith("--")]
            close = difflib.get_close_matches(extras[0].partition("=")[0], flags, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            self.error(f"unrecognized arguments: {' '.join(extras)}{hint}")
        return parsed, extras


#: What each ``--help`` section is about.
GROUP_HELP = {
    "hop sessions": "the session between two gateways (or a page and a gateway)",
    "limits": "what one peer can make this gateway hold; the defaults are safe on a small "
    "machine (worst cases: docs/topics/security.md)",
    "cluster": "several instances behind a load balancer without affinity "
    "(docs/howto/cluster.md, docs/topics/security.md)",
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
    if setting.kind == "flag":  # --no-X turns off what the environment or the file turned on
        section.add_argument(setting.option, action=argparse.BooleanOptionalAction, **common)
    elif setting.kind == "choice":
        section.add_argument(setting.option, choices=setting.choices, **common)
    elif setting.repeatable:
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
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CommandParser)
    for role, (short, long) in ROLE_HELP.items():
        sub = commands.add_parser(
            role,
            help=short,
            description=textwrap.fill(long, 79),
            epilog=SOURCES_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
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


def flags_given(args: argparse.Namespace) -> dict[str, Any]:
    """The setting flags on the command line (``None``: not given), by ``Config`` field."""
    return {k: v for k, v in vars(args).items() if k not in ("command", "config")}


def settings_from_args(
    args: argparse.Namespace, environ: dict[str, str] | None = None
) -> dict[str, Any]:
    """Settings from the config file, the environment and the flags, for ``build_config``."""
    environ = dict(os.environ) if environ is None else environ
    return gather(flags_given(args), environ, args.config).values


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
        loaded = load_config(args.command, flags_given(args), os.environ, args.config)
        config = loaded.config
        new_loop = event_loop_factory(config.event_loop)
    except ConfigError as exc:
        print(f"hopgate {args.command}: error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level, config.log_format)
    for warning in loaded.warnings:
        say(args.command, "warning", warning)
    tune_gc()
    tune_malloc()
    try:
        with asyncio.Runner(loop_factory=new_loop) as runner:
            runner.run(serve(config))
    except ConfigError as exc:  # a TLS file changed since it was checked
        say(args.command, "error", str(exc))
        return 2
    except OSError as exc:
        say(args.command, "error", exc.strerror or str(exc))
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
