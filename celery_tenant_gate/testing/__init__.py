"""Test helpers shipped with the package, for our tests, the demo and yours:
a local stand-in for SuperOffice and a throw-away Redis server."""

from __future__ import annotations

from .redis_server import EmbeddedRedis
from .superoffice import FakeSuperOffice, Reply, generate_key

__all__ = ["EmbeddedRedis", "FakeSuperOffice", "Reply", "generate_key"]
