"""The cluster recipes themselves: the owner-prefix generator agrees with the gateway, configs load.

``deploy/haproxy/owner_prefix.py`` runs on a load balancer without hopgate
installed, so it re-implements the owner encoding with the standard
library; here it is held to ``gateway.core.cluster`` (what an instance
writes into its session ids). The rendered recipes are checked by the
proxies' own parsers (``haproxy -c``, ``nginx -t``); ``test_cluster.py``
runs them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gateway.core.cluster import encode_owner, normal_owner
from tests.cluster.harness import NGINX_RECIPE, RECIPE, owner_prefix
from tests.proxies import DEPLOY_DIR, NGINX_MAIN, find_binary, render

GENERATOR = DEPLOY_DIR / "haproxy" / "owner_prefix.py"
URLS = [
    "http://10.0.0.5:8080",
    "http://10.0.0.6",
    "HTTPS://Node-3.Example.COM/",
    "http://[fd00::7]:8080",
]


def generate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GENERATOR), *args], capture_output=True, text=True, timeout=30
    )


def test_generator_prefixes_are_the_gateways() -> None:
    done = generate("--prefix-only", *URLS)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [encode_owner(normal_owner(url)) for url in URLS]


def test_generator_refuses_what_is_not_an_advertise_url() -> None:
    done = generate("ftp://10.0.0.5:21")
    assert done.returncode == 2
    assert "--advertise URL" in done.stderr


def test_generator_lines_are_the_recipes() -> None:
    """What owner_prefix.py prints for three instances is what the recipe has, filled in."""
    urls = URLS[:3]
    done = generate(*urls)
    assert done.returncode == 0, done.stderr
    values = {
        f"SERVER_{n}": normal_owner(u).split("://")[1] for n, u in zip("ABC", urls, strict=True)
    }
    values |= {
        f"OWNER_{n}": owner_prefix(normal_owner(u)) for n, u in zip("ABC", urls, strict=True)
    }
    text = render(RECIPE, LISTEN=":80", **values)
    for line in done.stdout.splitlines():
        assert line.strip() and line + "\n" in text, line


def test_haproxy_accepts_the_recipe(tmp_path: Path) -> None:
    values = {f"SERVER_{n}": f"127.0.0.1:{8080 + i}" for i, n in enumerate("ABC")}
    values |= {
        f"OWNER_{n}": owner_prefix(f"http://127.0.0.1:{8080 + i}") for i, n in enumerate("ABC")
    }
    config = tmp_path / "haproxy.cfg"
    config.write_text(render(RECIPE, LISTEN="127.0.0.1:8079", **values))
    done = subprocess.run(
        [find_binary("haproxy"), "-c", "-f", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_nginx_accepts_the_recipe(tmp_path: Path) -> None:
    values = {f"SERVER_{n}": f"127.0.0.1:{8080 + i}" for i, n in enumerate("ABC")}
    (tmp_path / NGINX_RECIPE.name).write_text(
        render(NGINX_RECIPE, LISTEN="127.0.0.1:8079", **values)
    )
    main = tmp_path / "nginx.conf"
    main.write_text(NGINX_MAIN.format(dir=tmp_path, recipe=NGINX_RECIPE.name))
    done = subprocess.run(
        [find_binary("nginx"), "-t", "-p", f"{tmp_path}/", "-c", str(main), "-e", "stderr"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stdout + done.stderr
