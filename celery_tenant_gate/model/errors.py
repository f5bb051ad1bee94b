"""Every error this package raises derives from :class:`TenantGateError`.

Messages name the tenant, the setting or the field at fault, so that a log line
alone says what to fix.
"""

from __future__ import annotations


class TenantGateError(Exception):
    """Base class of every error raised by celery-tenant-gate."""


class ConfigError(TenantGateError, ValueError):
    """A ``tenant_gate_*`` setting has a bad value; the message names the key."""


class InvalidTenantId(TenantGateError, ValueError):
    """A context identifier (tenant id) is missing or malformed."""


class StateAPIError(TenantGateError):
    """The State API did not give a usable answer for a tenant."""

    def __init__(self, context_id: str, message: str) -> None:
        super().__init__(f"State API, tenant {context_id}: {message}")
        self.context_id = context_id


class TenantNotFound(StateAPIError):
    """The State API answered 404: it does not know the tenant."""


class StateAPIUnavailable(StateAPIError):
    """The State API could not be reached, timed out, or answered 5xx/429.

    ``retry_after`` is the number of seconds the server asked us to wait, if it said.
    """

    def __init__(self, context_id: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(context_id, message)
        self.retry_after = retry_after


class StateAPIStatusError(StateAPIError):
    """The State API answered an unexpected HTTP status (other than 404, 429, 5xx)."""

    def __init__(self, context_id: str, status: int) -> None:
        super().__init__(context_id, f"unexpected HTTP status {status}")
        self.status = status


class StateAPIResponseError(StateAPIError):
    """The State API answered 200 with a body that is not a valid state document."""


class TenantMismatch(StateAPIResponseError):
    """The answer is about another tenant than the one asked for."""


class CircuitOpen(StateAPIUnavailable):
    """Recent calls to the State API failed; calls are refused until it cools down."""
