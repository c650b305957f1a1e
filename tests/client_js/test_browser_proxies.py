"""The browser shim through the shipped reverse-proxy recipes, as a site would deploy it.

The page is loaded from the proxy's origin (nginx or HAProxy on a free,
non-default port, ``deploy/nginx/*.conf`` and ``deploy/haproxy/hopgate.cfg``
as shipped, ``tests/proxies.py``), so its hop session is same-origin only if
the recipe passes the ``Host`` with its port: with nginx's ``$host`` the
gateway answered 403 "origin ... may not open hop sessions here". ``direct``
is the same page from the gateway itself, the baseline.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.client_js.browser_stack import (  # noqa: F401  (the fixtures browser and stack)
    Stack,
    browser_fixture,
    stack_fixture,
)
from tests.client_js.page import SUBPROTOCOL, open_page, run
from tests.proxies import Proxies, proxies  # noqa: F401  (proxies is a fixture)

pytestmark = pytest.mark.timeout(150)

#: Route -> the transport the session settles on: nginx's default recipe
#: drops ``Upgrade``, so the shim stays on long-poll there.
ROUTES = {
    "direct": "websocket",
    "nginx": "long-poll",
    "nginx-ws": "websocket",
    "haproxy": "websocket",
}
SMALL = 64 * 1024


def page_origin(stack: Stack, proxies: Proxies, route: str) -> str:  # noqa: F811
    if route == "direct":
        return stack.gateway
    return proxies.reverse(route, stack.gateway).url.rstrip("/")


@pytest.mark.parametrize("route", list(ROUTES))
async def test_echo_through_the_recipe(
    stack: Stack,
    browser: Any,
    proxies: Proxies,  # noqa: F811
    route: str,
) -> None:
    origin = page_origin(stack, proxies, route)
    assert not origin.endswith((":80", ":443")), origin  # the port must survive the proxy
    page = await open_page(browser, origin + "/")
    out = await run(page, "([o, size]) => hop.echoAll(o, size)", {}, SMALL)
    assert out["transport"] == ROUTES[route]
    assert out["transportAtEnd"] == ROUTES[route]
    assert out["protocol"] == SUBPROTOCOL
    assert out["url"] == origin.replace("http://", "ws://") + "/ws"
    assert out["text"] == "héllo ☃"
    assert out["arraybuffer"] == {"isArrayBuffer": True, "bytes": [0, 1, 2, 255]}
    assert out["big"]["same"] is True
    assert out["close"]["wasClean"] is True
    if route.startswith("nginx"):
        # The page and its session really went through nginx.
        assert "POST /.hopgate/session" in proxies.started[0].log_text("access.log")


@pytest.mark.parametrize("route", list(ROUTES))
async def test_messages_arrive_in_order_through_the_recipe(
    stack: Stack,
    browser: Any,
    proxies: Proxies,  # noqa: F811
    route: str,
) -> None:
    n = 100
    page = await open_page(browser, page_origin(stack, proxies, route) + "/")
    out = await run(page, "([o, n, i]) => hop.numbered(o, n, i)", {}, n, 2)
    assert out["transports"] == [ROUTES[route]]
    assert out["count"] == n and out["inOrder"] and out["unique"] == n
    assert stack.log.received == [f"n:{k}" for k in range(1, n + 1)]
    assert stack.log.connections == 1
