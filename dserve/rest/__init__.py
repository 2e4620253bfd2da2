"""The REST admin API (Ray Serve's V1 and V2), served from the scheduler process."""
from .app import create_app

__all__ = ["create_app"]
