"""Transports of a hop session: the asyncio/aiohttp adapters that carry session frames.

WebSocket and long-poll carriers, the answering endpoint, the dialling
connector, and :class:`~gateway.transports.hopsession.HopSession` that drives
the pure session core over whichever carrier is attached. They import only
the cores below them.
"""
