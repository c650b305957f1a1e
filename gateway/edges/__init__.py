"""Edges: the HTTP server facing legacy clients and the HTTP client facing legacy servers."""
