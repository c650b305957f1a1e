"""``hopgate doctor URL``: the subcommand's flags, help and exit status."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from yarl import URL

from gateway.config import ConfigError, read_secret_file
from gateway.doctor.probe import Options, run
from gateway.doctor.verdict import judge, render_human, render_json

__all__ = ["DESCRIPTION", "add_arguments", "main"]

SHORT = "walk the path to a gateway step by step and say what to change"

DESCRIPTION = """\
Walk the path to the gateway at URL step by step, on raw connections (h11 and
wsproto: what the path returns is reported as it came), then give a verdict
and what to change.

steps:
  tcp        connect time (and for https:// the certificate check: tls)
  request    GET of the URL's path, marked as a gateway's request: status,
             Server / Via (a proxy in the path?), whether a gateway's
             hop-by-hop note came back (nothing in between drops it)
  hello      GET /.hopgate/hello?nonce=N: a gateway proves itself
  session    POST /.hopgate/session (with the hop secret if given), as a
             client gateway opens a hop session
  upgrade    the WebSocket handshake for that session: the status line and
             the Upgrade / Connection / Sec-WebSocket-Accept that came back
             (a non-101 means a proxy dropped Upgrade/Connection)
  frames     over the upgraded socket: the session probe, 5 small PINGs
             200 ms apart (PONGs that arrive late and together mean a
             buffering intermediary), the origin's answer to the URL's path
             through the session (down), a 1 MiB message up (acked)
  long_poll  a second session on long-poll only: the same tunnelled GET over
             a held GET and a POST
  idle       with --idle-test S: the WebSocket left idle up to S seconds;
             when the path closes it, after how long

exit status: 0 when a hop session can be opened and carried on some
transport (WebSocket or long-poll), 1 when none, 2 on a usage error.
"""

EPILOG = """\
examples:
  hopgate doctor http://127.0.0.1:8080/
  hopgate doctor https://chat.example.com/app/ --idle-test 90 --json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", metavar="URL", help="the gateway, as a client gateway's --upstream")
    parser.add_argument("--json", action="store_true", help="print one JSON object, no text")
    parser.add_argument(
        "--idle-test",
        type=float,
        metavar="SECONDS",
        help="keep an idle WebSocket open up to SECONDS and report when the path closed it",
    )
    parser.add_argument("--hop-secret", metavar="TEXT", help="the gateways' hop secret")
    parser.add_argument(
        "--hop-secret-file", type=Path, metavar="FILE", help="read the hop secret from FILE"
    )
    parser.add_argument(
        "--ca-file", metavar="FILE", help="CA certificates (PEM) to verify an https:// gateway"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="longest wait for each connect and answer (default 10)",
    )


def main(args: argparse.Namespace) -> int:
    url = URL(args.url)
    if url.scheme not in ("http", "https") or not url.host:
        print(
            f"hopgate doctor: error: {args.url!r} is not an http:// or https:// URL",
            file=sys.stderr,
        )
        return 2
    secret = args.hop_secret
    if args.hop_secret_file is not None:
        if secret is not None:
            print(
                "hopgate doctor: error: give --hop-secret or --hop-secret-file, not both",
                file=sys.stderr,
            )
            return 2
        try:
            secret = read_secret_file(args.hop_secret_file)
        except ConfigError as exc:
            print(f"hopgate doctor: error: {exc}", file=sys.stderr)
            return 2
    options = Options(
        url=url,
        hop_secret=secret,
        ca_file=args.ca_file,
        idle_test=args.idle_test,
        timeout=args.timeout,
    )
    try:
        findings = asyncio.run(run(options))
    except KeyboardInterrupt:
        return 130
    report = judge(findings)
    print(render_json(report) if args.json else render_human(report))
    return report.exit_code
