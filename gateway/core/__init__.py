"""Pure protocol cores: the hop session, the tunnel, discovery, the upgrade ladder.

Nothing in this folder touches a socket, an event loop or a clock: each core
takes bytes and calls in, returns bytes and events out, and is tested without
an event loop. ``tests/test_layers.py`` walks the folder and fails on any
import of asyncio, aiohttp or another I/O module, and on any import of a
layer above.
"""
