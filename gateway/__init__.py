"""hopgate: a transparent long-poll <-> WebSocket upgrading gateway."""

__version__ = "0.1.0"
