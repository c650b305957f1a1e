"""Transports of a hop session: the asyncio/aiohttp adapters that carry session frames.

The carriers (``ws``, ``longpoll``), the answering end (``endpoint``: the
HTTP handlers; ``admission``: who may open a session and what one may hold;
``registry``: the sessions and per-address counts), the dialling end
(``connector``), and :class:`~gateway.transports.hopsession.HopSession` that
drives the pure session core over whichever carrier is attached. Both ends
share ``handshake`` (path, headers, tokens, hop secret), ``session_settings``
and ``errors`` (the typed I/O errors callers match by class). They import
only the cores below them.

Beside them, the aiohttp plumbing every layer above shares: ``http`` (plain
text errors, bounded body readers, WebSocket upgrade, close and refusal
helpers), ``aiohttp_internals`` (the only place that touches a private
aiohttp detail) and ``tasks`` (``TaskSet``, background tasks held and stopped
together).
"""
