#!/usr/bin/env python3
"""Print the HAProxy owner-routing lines for the instances of one hopgate cluster.

A hop session id is ``<owner>.<nonce>.<mac>``, where ``owner`` is the
base64url (no padding) of the owning instance's ``--advertise`` URL written
as ``scheme://host:port`` (lower case, the port spelled out).  HAProxy routes
a session's requests to its owner with one ``path_beg`` ACL per instance;
this prints them, for ``hopgate-cluster.cfg``, from the URLs you pass to
``--advertise``.  Standard library only, so it runs on the load balancer.

    python3 owner_prefix.py http://10.0.0.5:8080 http://10.0.0.6:8080
    python3 owner_prefix.py --prefix-only http://10.0.0.5:8080
"""

from __future__ import annotations

import argparse
import base64
import sys
from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}


def normalised(url: str) -> str:
    """``scheme://host:port`` as the gateway writes it into the id (what it signs)."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"{url!r}: give the instance's --advertise URL, e.g. http://10.0.0.5:8080")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{parts.port or DEFAULT_PORTS[scheme]}"


def owner_prefix(url: str) -> str:
    """The ``<owner>`` field of the ids of sessions this instance owns."""
    return base64.urlsafe_b64encode(normalised(url).encode()).rstrip(b"=").decode("ascii")


def server_address(url: str) -> str:
    """``host:port`` for the ``server`` line (where HAProxy reaches the instance)."""
    return urlsplit(normalised(url)).netloc


def lines(urls: list[str]) -> list[str]:
    """The ``acl``/``use-server``/``server`` lines for ``backend hopgate_cluster``."""
    acls, rules, servers = [], [], []
    for number, url in enumerate(urls, 1):
        name = f"hopgate{number}"
        acls.append(f"    acl owner_{name} path_beg /.hopgate/session/{owner_prefix(url)}.")
        rules.append(f"    use-server {name} if owner_{name}")
        servers.append(f"    server {name} {server_address(url)}")
    return [*acls, *rules, *servers]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("urls", nargs="+", metavar="ADVERTISE_URL")
    parser.add_argument(
        "--prefix-only", action="store_true", help="print only each URL's owner prefix"
    )
    args = parser.parse_args(argv)
    try:
        out = [owner_prefix(u) for u in args.urls] if args.prefix_only else lines(args.urls)
    except ValueError as exc:
        print(f"owner_prefix.py: {exc}", file=sys.stderr)
        return 2
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
