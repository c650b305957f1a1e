"""Stream <-> HTTP glue: tunnelled exchanges and WebSockets turned back into HTTP.

The opening side turns an edge's request into a tunnel stream; the answering
side turns a tunnel stream into a request to the origin; the relay passes a
stream on to the next hop unchanged. Edges call in here; this folder imports
only transports and cores.
"""
