"""Three real ``hopgate server`` instances behind real HAProxy (deploy/haproxy/hopgate-cluster.cfg).

legacy client -> hopgate client -> HAProxy -> 3 x hopgate server -> origin,
every piece a process (``tests.cluster.harness``). The scenarios and their
figures are in ``tests.cluster.scenarios`` (``python -m tests.cluster.measure``
prints them, for this tree or the one from before clusters); here they are
asserted:

* the hop forced onto long-poll through round robin stays one long-poll
  session, with the recipe's owner routing (no request needs passing on
  between instances) and without it (instances pass requests to the owner);
* a rolling restart of all three while 1,000 numbered messages flow: no
  failed request, nothing lost, duplicated or reordered;
* ``kill -9`` of the session's owner under the same traffic, beside the
  legacy client talking to HAProxy directly through the same instances
  killed the same way;
* forged owner ids through HAProxy are refused and dial nobody.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from typing import Any

import aiohttp
import pytest

from gateway.core.cluster import ClusterIds
from tests.cluster import scenarios
from tests.cluster.harness import (
    FORCE_LONG_POLL,
    NGINX_NO_UPGRADE,
    NO_OWNER_ROUTING,
    owner_prefix,
    running_cluster,
    status,
)
from tests.processes import free_port

pytestmark = pytest.mark.timeout(150)

NOTHING_FAILED = {"sends": 0, "polls": 0, "polls_unanswered": 0}


def show(name: str, figures: dict[str, Any]) -> None:
    """The figures, in the captured output (``-s`` or a failure shows them)."""
    print(f"{name}: {json.dumps(figures, default=str)}")


@pytest.mark.parametrize("owner_routing", [True, False], ids=["owner-routing", "round-robin"])
async def test_long_poll_through_round_robin_stays_a_session(owner_routing: bool) -> None:
    changes = FORCE_LONG_POLL if owner_routing else (*FORCE_LONG_POLL, *NO_OWNER_ROUTING)
    got = await scenarios.longpoll(changes=changes)
    show("longpoll", got)
    assert got["first_transport"] == "long-poll", got
    assert set(got["transports_sampled"]) == {"long-poll"}, got
    assert got["last_transport"] == "long-poll", got
    assert not [t for t in got["transitions"] if "->plain" in t], got["transitions"]
    assert got["failed"] == NOTHING_FAILED, got
    assert got["problems"] == [], got["problems"]
    if owner_routing:
        # HAProxy sent each session request to its owner: nothing passed on.
        assert got["forwarded"] == 0, got
        assert got["session_requests_elsewhere"] == 0, got
    else:
        assert got["forwarded"] > 0, got


async def test_long_poll_through_nginx_round_robin() -> None:
    """deploy/nginx/hopgate-cluster.conf with upgrades dropped: instances pass requests on."""
    got = await scenarios.longpoll(changes=NGINX_NO_UPGRADE, balancer="nginx", count=60)
    show("longpoll nginx", got)
    assert set(got["transports_sampled"]) == {"long-poll"}, got
    assert not [t for t in got["transitions"] if "->plain" in t], got["transitions"]
    assert got["failed"] == NOTHING_FAILED and got["problems"] == [], got
    assert got["forwarded"] > 0, got


@pytest.mark.parametrize("hop", ["websocket", "long-poll"])
async def test_rolling_restart_loses_nothing(hop: str) -> None:
    got = await scenarios.rolling(count=1000, changes=FORCE_LONG_POLL if hop == "long-poll" else ())
    show("rolling", got)
    assert set(got["restarts"]) == {1, 2, 3}, got
    assert got["sent_when_restarts_done"] < 1000, "the restarts must happen while messages flow"
    assert got["failed"] == NOTHING_FAILED, got
    assert got["problems"] == [], got["problems"]
    assert got["messages_seen"] == [1000]
    assert got["send_answers"] == {200: 1000}, got
    assert got["first_transport"] == got["last_transport"] == hop, got


async def test_kill_of_the_owner_beside_a_direct_connection() -> None:
    gateways = await scenarios.kill()
    direct = await scenarios.kill(direct=True)
    show("kill -9 (gateways)", gateways)
    show("kill -9 (direct)", direct)
    assert gateways["victim"] is not None and direct["victim"] is not None
    # The held poll (a GET, no body) is retried on the new session; at most
    # the one POST sent into the dead session in the first instant fails.
    assert gateways["failed"]["polls"] == 0 and gateways["failed"]["polls_unanswered"] == 0
    assert gateways["failed_total"] <= direct["failed_total"] + 1, (gateways, direct)
    assert gateways["problems"] == [] and direct["problems"] == []
    assert gateways["new_session_s"] is not None and gateways["new_session_s"] <= 2.0, gateways
    assert gateways["recovery_s"] is not None and gateways["recovery_s"] <= 3.0, gateways


async def test_forged_owner_ids_dial_nobody() -> None:
    accepted: list[str] = []

    async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(str(writer.get_extra_info("peername")))
        writer.close()

    port = free_port()
    listener = await asyncio.start_server(count, "127.0.0.1", port)
    target = f"http://127.0.0.1:{port}"
    nonce = base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode()
    foreign = ClusterIds(secrets.token_urlsafe(32), target)  # another cluster's secret
    async with listener, running_cluster(direct=True) as cluster:
        own = owner_prefix(cluster.instances[0].url)
        forged = {
            "mac made up": f"{owner_prefix(target)}.{nonce}.{'A' * 22}",
            "another secret": foreign.session_id(nonce),
            "an instance's owner, MAC made up": f"{own}.{nonce}.{'B' * 22}",
        }
        answers = {}
        token = {"X-Hopgate-Token": base64.urlsafe_b64encode(b"x" * 32).decode()}
        async with aiohttp.ClientSession() as http:
            for what, session_id in forged.items():
                path = f"{cluster.entry}/.hopgate/session/{session_id}"
                async with http.get(path, params={"last": "0", "epoch": "1"}, headers=token) as r:
                    answers[f"GET {what}"] = r.status
                async with http.post(path, params={"epoch": "1"}, data=b"", headers=token) as r:
                    answers[f"POST {what}"] = r.status
                ws = {**token, "Upgrade": "websocket", "Connection": "Upgrade"}
                ws |= {"Sec-WebSocket-Version": "13", "Sec-WebSocket-Protocol": "hopgate.v1"}
                ws["Sec-WebSocket-Key"] = base64.b64encode(secrets.token_bytes(16)).decode()
                async with http.get(path, params={"epoch": "1"}, headers=ws) as r:
                    answers[f"WebSocket {what}"] = r.status
        await asyncio.sleep(0.5)
        docs = [await status(i.url) for i in cluster.instances]
        refused = sum(int(doc.get("cluster", {}).get("forged", 0)) for doc in docs)
    show("forged", {"answers": answers, "refused": refused, "accepted": accepted})
    assert all(400 <= code < 500 for code in answers.values()), answers
    assert accepted == [], f"an instance dialled the forged owner: {accepted}"
    assert refused >= len(answers), answers
