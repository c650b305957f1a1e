"""Stream <-> HTTP glue: tunnelled exchanges and WebSockets turned back into HTTP.

The opening side (``opener``) turns an edge's request into a tunnel stream;
the answering side (``answerer``) turns a tunnel stream into a request to the
origin; the relay (``relay``) passes a stream on to the next hop unchanged;
``wsbridge`` joins an endpoint WebSocket to its stream on either side. Each
works on a ``driver.TunnelDriver`` (one tunnel core over one hop session);
``link.TunnelLink`` puts a driver and its role together. Edges call in here;
this folder imports only transports and cores (the edge's HTTP client is
named by the ``origin.OriginClient`` protocol).
"""
