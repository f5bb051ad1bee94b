"""Test helpers shipped with the package, for our tests, the demo and yours:
a local stand-in for SuperOffice (its State API, and a server's tenant API) and a
throw-away Redis server."""

from __future__ import annotations

from .redis_server import EmbeddedRedis
from .superoffice import FakeSuperOffice, Reply, generate_key
from .tenant_api import FakeTenantApi

__all__ = ["EmbeddedRedis", "FakeSuperOffice", "FakeTenantApi", "Reply", "generate_key"]
