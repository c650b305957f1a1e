"""A gateway's operational paths: metrics, ready, live (and status), and the admin listener.

These paths are answered by the gateway itself and never forwarded:

    /.hopgate/metrics   Prometheus text format (``gateway.metrics``); the
                        status access rule (loopback unless --public-status)
                        on the main listener, since its labels name upstreams
    /.hopgate/ready     200 while serving; 503 while draining (a signal came)
                        or while the configured upstream has answered
                        nothing but 502/504 for --ready-unreachable seconds
    /.hopgate/live      200 while the event loop runs

Ready and live answer anyone: load balancers and orchestrators probe them,
and they say nothing but yes or no.

``--admin-listen HOST:PORT`` serves these four paths (status included) on a
listener of their own, to anyone who can reach it: the operator chose that
address. Everything else gets a 404 there. It is closed last on shutdown, so
``ready`` can be seen saying 503 during the grace.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Final

from aiohttp import web

from gateway.metrics import CONTENT_TYPE, Metrics
from gateway.status import STATUS_PATH, GatewayStats, RequestRecord, status_refusal
from gateway.transports.http import text_error

__all__ = ["LIVE_PATH", "METRICS_PATH", "READY_PATH", "AdminServer", "Health", "OwnPaths"]

log = logging.getLogger("hopgate")

METRICS_PATH: Final = "/.hopgate/metrics"
READY_PATH: Final = "/.hopgate/ready"
LIVE_PATH: Final = "/.hopgate/live"
ADMIN_PATHS: Final = (METRICS_PATH, STATUS_PATH, READY_PATH, LIVE_PATH)
#: Statuses that say the upstream could not be reached or did not answer in time.
UNREACHABLE: Final = frozenset({502, 504})
_JSON: Final = "application/json"


class Health:
    """Whether this gateway should get traffic: ``/.hopgate/ready`` asks ``why_not``.

    It is not ready while draining (``drain``: a signal came, it is
    stopping) or while every request to the configured upstream has been
    answered 502/504 (by the gateway, which could not reach it, or by the
    upstream itself) for longer than ``unreachable_after`` seconds, with no
    other answer since. A gateway that saw no request knows nothing bad.
    """

    def __init__(
        self,
        stats: GatewayStats,
        *,
        watch_upstream: bool,
        unreachable_after: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.draining = False
        self._after = unreachable_after
        self._clock = clock
        self._failing_since: float | None = None
        if watch_upstream:
            stats.observers.append(self._seen)

    def drain(self) -> None:
        self.draining = True

    def _seen(self, request: RequestRecord) -> None:
        if request.target.startswith("/.hopgate/"):
            return  # our own paths (probes included) say nothing about the upstream
        if request.status not in UNREACHABLE:
            self._failing_since = None
        elif self._failing_since is None:
            self._failing_since = self._clock()

    def why_not(self) -> str | None:
        """Why this gateway is not ready, or None if it is."""
        if self.draining:
            return "draining: the gateway is shutting down"
        since = self._failing_since
        if since is not None and self._clock() - since > self._after:
            return (
                f"the upstream has answered only 502/504 for {self._clock() - since:.0f} s "
                f"(--ready-unreachable {self._after:g})"
            )
        return None

    @property
    def ready(self) -> bool:
        return self.why_not() is None


class OwnPaths:
    """Answers ``ADMIN_PATHS``; ``answer`` returns None for any other path.

    ``public``: serve metrics and status to anyone,
    as the admin listener does; else only to direct loopback clients,
    unless ``--public-status``.
    """

    def __init__(
        self,
        stats: GatewayStats,
        metrics: Metrics,
        health: Health,
        *,
        public: bool,
    ) -> None:
        self._stats = stats
        self._metrics = metrics
        self._health = health
        self._public = public

    def answer(self, request: web.BaseRequest) -> web.Response | None:
        path = request.path
        if path not in ADMIN_PATHS:
            return None
        if request.method not in ("GET", "HEAD"):
            return text_error(405, f"{path} answers GET only", Allow="GET, HEAD")
        if path == LIVE_PATH:
            return _json({"live": True})
        if path == READY_PATH:
            why = self._health.why_not()
            body: dict[str, object] = {"ready": why is None}
            if why is not None:
                body["reason"] = why
            return _json(body, status=200 if why is None else 503)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        peer_ip = str(peer[0]) if isinstance(peer, tuple) else None
        refused = status_refusal(peer_ip, request.headers.keys(), public=self._public)
        if refused is not None:
            if path != STATUS_PATH:
                refused = refused.replace("status details", f"{path} figures", 1)
            return text_error(403, refused)
        if path == STATUS_PATH:
            return _json(self._stats.as_json(), indent=2)
        return web.Response(
            body=self._metrics.render(),
            headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"},
        )


def _json(body: object, *, status: int = 200, indent: int | None = None) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(body, indent=indent) + "\n",
        content_type=_JSON,
        headers={"Cache-Control": "no-store"},
    )


class AdminServer:
    """The ``--admin-listen`` listener: ``ADMIN_PATHS`` only, to whoever reaches it."""

    def __init__(self, paths: OwnPaths, host: str, port: int, *, main_url: Callable[[], str]):
        self._paths = paths
        self._host = host
        self._port = port
        self._main_url = main_url
        self._runner: web.ServerRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Bind; a busy port says which flag to change."""
        server = web.Server(self._dispatch, access_log=None)
        self._runner = web.ServerRunner(server, shutdown_timeout=1.0)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self._host, self._port).start()
        except OSError as exc:
            await self.stop()
            raise OSError(
                exc.errno,
                f"cannot listen on {self._host}:{self._port} for --admin-listen: "
                f"{exc.strerror}; pick another --admin-listen port",
            ) from exc
        self.port = self._runner.addresses[0][1]
        log.info("= admin endpoints (metrics, status, ready, live) on %s", self.url)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        answer = self._paths.answer(request)
        if answer is not None:
            return answer
        return text_error(
            404,
            f"the admin listener serves only {', '.join(ADMIN_PATHS)}; "
            f"send other requests to the gateway at {self._main_url()}",
        )
