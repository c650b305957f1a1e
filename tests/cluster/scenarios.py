"""The cluster scenarios, each returning its figures: run by the tests and by ``measure``.

* ``longpoll``: the hop forced onto long-poll through round robin, sampled
  while messages flow: which transports the client gateway's status showed;
* ``rolling``: SIGTERM each instance in turn, wait until it is gone, start
  it again, wait until HAProxy has it back, next, while 1,000 numbered
  messages are sent and polled;
* ``kill``: ``kill -9`` of the instance carrying the legacy client's traffic
  (the session's owner; with ``direct`` the one holding the poll) while the
  poll is held, then the traffic goes on at once: failed requests and the
  time until a message sent after the kill is seen.

Every wait is bounded; the figures are plain dicts so ``measure`` prints
them as they are.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from tests.cluster.harness import (
    FORCE_LONG_POLL,
    HAPROXY_RISE,
    Cluster,
    Instance,
    forwarded,
    hop,
    running_cluster,
    session_owner,
    session_routes,
    status,
    wait_ready,
)
from tests.cluster.traffic import Traffic, run_traffic

Changes = Sequence[tuple[str, str]]

#: Longest wait for the client gateway's hop to have a session at the start.
HOP_TIMEOUT = 15.0


async def wait_hop(cluster: Cluster, timeout: float = HOP_TIMEOUT) -> dict[str, Any]:
    """Until the client's hop is not ``plain`` (or ``timeout``); its status entry."""
    deadline = time.monotonic() + timeout
    entry = await hop(cluster)
    while entry.get("transport") in (None, "plain", "none") and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        entry = await hop(cluster)
    return entry


def summary(traffic: Traffic) -> dict[str, Any]:
    assert traffic.score is not None
    return {
        "failed": traffic.failed(),
        "errors": [*traffic.sender.errors, *traffic.poller.errors][:6],
        "problems": traffic.score.problems(),
        **traffic.score.figures(),
    }


async def longpoll(
    tree: Path | None = None,
    clustered: bool = True,
    changes: Changes = FORCE_LONG_POLL,
    balancer: str = "haproxy",
    count: int = 150,
) -> dict[str, Any]:
    async with running_cluster(
        clustered=clustered, changes=changes, tree=tree, balancer=balancer
    ) as cluster:
        first = await wait_hop(cluster)
        samples: Counter[str] = Counter()

        async def sample(traffic: Traffic) -> None:
            while traffic.sender.finished_at == 0.0:
                samples[str((await hop(cluster)).get("transport"))] += 1
                await asyncio.sleep(0.25)

        traffic, _ = await run_traffic(
            cluster.entry, cluster.origin_url, sample, count=count, per_round=15, pause=0.4
        )
        last = await hop(cluster)
        routes = session_routes(cluster) if balancer == "haproxy" else Counter()
        return {
            "first_transport": first.get("transport"),
            "transports_sampled": dict(samples),
            "forwarded": await forwarded(cluster),
            "session_requests": sum(routes.values()),
            "session_requests_elsewhere": sum(n for (o, s), n in routes.items() if o != s),
            "last_transport": last.get("transport"),
            "transitions": [
                f"{t['from']}->{t['to']} {t['reason']}" for t in last.get("transitions", [])
            ],
            **summary(traffic),
        }


async def restart(cluster: Cluster, inst: Instance) -> dict[str, float]:
    """SIGTERM ``inst``, wait until it is gone, start it again, wait until HAProxy has it."""
    began = time.monotonic()
    gone = await asyncio.to_thread(cluster.stop_instance, inst)
    await asyncio.to_thread(cluster.start_instance, inst)
    await wait_ready(inst.url)
    await asyncio.sleep(HAPROXY_RISE)
    return {"stop_s": round(gone, 2), "total_s": round(time.monotonic() - began, 2)}


async def rolling(
    tree: Path | None = None, clustered: bool = True, count: int = 1000, changes: Changes = ()
) -> dict[str, Any]:
    async with running_cluster(clustered=clustered, tree=tree, changes=changes) as cluster:
        first = await wait_hop(cluster)

        async def roll(traffic: Traffic) -> dict[str, Any]:
            await traffic.held_pause()
            steps = {}
            for inst in cluster.instances:
                steps[inst.number] = await restart(cluster, inst)
            done_at = time.monotonic()
            sent_during = traffic.sender.sent
            traffic.sender.pause = 0.0  # the rest goes without pauses
            traffic.sender.resume.set()
            return {"restarts": steps, "sent_when_done": sent_during, "done_at": done_at}

        traffic, outcome = await run_traffic(
            cluster.entry, cluster.origin_url, roll, count=count, per_round=20, pause=0.6
        )
        last = await hop(cluster)
        return {
            "first_transport": first.get("transport"),
            "last_transport": last.get("transport"),
            "restarts": outcome["restarts"],
            "hop_counters": {k: last.get(k) for k in ("requests", "errors", "upgrades")},
            "sent_when_restarts_done": outcome["sent_when_done"],
            **summary(traffic),
        }


async def busy_instance(cluster: Cluster) -> Instance | None:
    """The instance with the most requests in flight (the held poll), if any has one.

    The status request asking is one of them: busy 1 is that request alone.
    """
    busy = {}
    for inst in cluster.instances:
        clients = (await status(inst.url)).get("clients") or {}
        busy[inst.number] = int(clients.get("busy", 0))
    cluster.note(f"busy {busy}")
    number = max(busy, key=lambda n: busy[n])
    return cluster.instances[number - 1] if busy[number] >= 2 else None


async def find_victim(cluster: Cluster, direct: bool) -> Instance | None:
    """The session's owner, or with ``direct`` the instance holding the poll (2 s at most)."""
    for _ in range(20):  # the poll may take a moment to be held again
        victim = await (busy_instance(cluster) if direct else session_owner(cluster))
        if victim is not None:
            return victim
        await asyncio.sleep(0.1)
    return None


async def kill(
    tree: Path | None = None,
    clustered: bool = True,
    direct: bool = False,
    count: int = 200,
    changes: Changes = (),
) -> dict[str, Any]:
    async with running_cluster(
        clustered=clustered, tree=tree, direct=direct, changes=changes
    ) as cluster:
        first = {} if direct else await wait_hop(cluster)

        async def crash(traffic: Traffic) -> dict[str, Any]:
            while traffic.sender.sent < count // 3:
                await traffic.held_pause()
            await traffic.next_pause(10.0)
            victim = await find_victim(cluster, direct)
            if victim is None:
                return {"victim": None}
            cluster.kill_instance(victim)
            killed_at, killed_wall = time.monotonic(), time.time()
            traffic.sender.pause = 0.5
            traffic.sender.resume.set()
            renewed = None if direct else await new_session_after(cluster, killed_wall)
            return {
                "victim": victim.number,
                "events": cluster.events[-3:],
                "killed_at": killed_at,
                "new_session_s": renewed,
            }

        traffic, outcome = await run_traffic(
            cluster.entry, cluster.origin_url, crash, count=count, per_round=20, pause=0.5
        )
        killed_at = outcome.get("killed_at")
        recovery = traffic.recovery(killed_at) if killed_at else None
        return {
            "direct": direct,
            "victim": outcome.get("victim"),
            "events": outcome.get("events"),
            "first_transport": first.get("transport"),
            "new_session_s": outcome.get("new_session_s"),
            "recovery_s": None if recovery is None else round(recovery, 3),
            "failed_total": traffic.failed_total(),
            **summary(traffic),
        }


async def new_session_after(cluster: Cluster, since: float, timeout: float = 10.0) -> float | None:
    """Seconds from ``since`` (wall clock) until the client's hop opened its next session.

    Read from the hop's transitions (``session_opened``, stamped by the
    client gateway), since the status shows only a prefix of the session id.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for move in (await hop(cluster)).get("transitions", []):
            at = datetime.fromisoformat(move["at"]).timestamp()
            if move["reason"] == "session_opened" and at >= since:
                return round(at - since, 3)
        await asyncio.sleep(0.05)
    return None


async def throughput(
    changes: Changes = (), requests: int = 1000, concurrency: int = 10
) -> dict[str, Any]:
    """Small requests through the client gateway and the cluster: requests per second.

    With the recipe's owner routing every session request reaches the owner
    directly; without it (``NO_OWNER_ROUTING``) two thirds of them are
    passed on by another instance (and a WebSocket attach lands on one
    instance that pumps every frame to the owner).
    """
    async with running_cluster(changes=changes) as cluster:
        first = await wait_hop(cluster)
        url = f"{cluster.entry}/soak/hold?s=0"
        statuses: Counter[int] = Counter()
        pending = iter(range(requests))

        async def worker(http: aiohttp.ClientSession) -> None:
            for _ in pending:
                async with http.get(url) as resp:
                    await resp.read()
                    statuses[resp.status] += 1

        async with aiohttp.ClientSession() as http:
            for _ in range(50):  # warm up
                async with http.get(url) as resp:
                    await resp.read()
            started = time.monotonic()
            await asyncio.gather(*(worker(http) for _ in range(concurrency)))
            took = time.monotonic() - started
        return {
            "transport": first.get("transport"),
            "requests_per_s": round(requests / took),
            "answers": dict(statuses),
            "forwarded": await forwarded(cluster),
        }
