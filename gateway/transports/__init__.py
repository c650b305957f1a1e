"""Transports of a hop session: the asyncio/aiohttp adapters that carry session frames.

WebSocket and long-poll carriers, the answering endpoint, the dialling
connector, and :class:`~gateway.transports.hopsession.HopSession` that drives
the pure session core over whichever carrier is attached. They import only
the cores below them.

Beside them, the aiohttp plumbing every layer above shares: ``http`` (plain
text errors, bounded body readers, WebSocket upgrade, close and refusal
helpers), ``aiohttp_internals`` (the only place that touches a private
aiohttp detail) and ``tasks`` (``TaskSet``, background tasks held and stopped
together).
"""
