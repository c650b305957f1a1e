"""``hopgate demo``: a legacy Comet chat, its legacy clients, and a runner that
puts two gateways between them so the path can be watched live.

Nothing in ``comet`` or ``legacy_client`` knows hopgate exists; that is the point.
"""
