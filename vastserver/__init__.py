"""vastserver: a VAST 4.x / VMAP 1.0 ad decision server for connected TV."""

__version__ = "0.1.0"
