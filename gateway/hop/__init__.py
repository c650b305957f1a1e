"""Joining gateways: discovery of a gateway peer, the upstream link, tunnelling over sessions."""
