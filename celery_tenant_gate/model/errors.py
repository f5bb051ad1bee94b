"""Every error this package raises derives from :class:`TenantGateError`.

Messages name the tenant, the setting or the field at fault, so that a log line
alone says what to fix.
"""

from __future__ import annotations

from typing import Any


class TenantGateError(Exception):
    """Base class of every error raised by celery-tenant-gate."""


class ConfigError(TenantGateError, ValueError):
    """A ``tenant_gate_*`` setting has a bad value; the message names the key."""


class InvalidTenantId(TenantGateError, ValueError):
    """A context identifier (tenant id) is missing or malformed."""


class StoreUnavailable(TenantGateError):
    """The store (the shared Redis) cannot be reached now: nothing that needs it (a
    hold, a drop, a pause) can be done until it answers again."""


class StateAPIError(TenantGateError):
    """The State API did not give a usable answer for a tenant."""

    def __init__(self, context_id: str, message: str) -> None:
        super().__init__(f"State API, tenant {context_id}: {message}")
        self.context_id = context_id


class StateAPIUnavailable(StateAPIError):
    """The State API could not be reached, timed out, or answered 5xx/429.

    ``retry_after`` is the number of seconds the server asked us to wait
    (``Retry-After``, cut to the client's maximum), if it said.
    """

    def __init__(self, context_id: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(context_id, message)
        self.retry_after = retry_after


class StateAPIStatusError(StateAPIError):
    """The State API answered an HTTP status it never answers when healthy (neither 200
    nor 429 nor 5xx): its URL (named) is wrong, or something in between is broken."""

    def __init__(self, context_id: str, status: int, url: str, message: str = "") -> None:
        super().__init__(context_id, message or f"unexpected HTTP status {status} from {url}")
        self.status = status
        self.url = url


class StateAPINotFound(StateAPIStatusError):
    """The State API answered 404.

    SuperOffice answers 200 with ``"State": "Unknown"`` for a tenant it does not know,
    so a 404 is no answer about the tenant: the URL is wrong (``tenant_gate_state_api_url``,
    or ``tenant_gate_environment`` which makes the default one) or the API is out of order.
    """

    def __init__(self, context_id: str, url: str) -> None:
        super().__init__(
            context_id,
            404,
            url,
            f"HTTP 404 from {url}: SuperOffice answers an unknown tenant with 200 and "
            "State Unknown, so the URL is probably wrong (check tenant_gate_state_api_url, "
            "or tenant_gate_environment which makes the default URL) or the API is down",
        )


class StateAPIResponseError(StateAPIError):
    """The State API answered 200 with a body that is not a valid state document."""


class TenantMismatch(StateAPIResponseError):
    """The answer is about another tenant than the one asked for.

    SuperOffice answers with the document of the tenant in the URL; another tenant's
    document means that something between us and it (a proxy or a cache keyed on the
    wrong thing, a request routed to the wrong place) is broken, and every answer that
    passes through it is suspect. So it counts against the circuit breaker like any
    other garbage, and is never taken as a state.
    """


class CircuitOpen(StateAPIUnavailable):
    """Recent calls to the State API failed, or it asked to be left alone for a while
    (``Retry-After``): calls are refused, before any request, until ``retry_after``."""


class TenantUnavailable(TenantGateError):
    """The tenant does not run now (its state, a pause, or its API said so): the
    request was not sent. Raised out of a tenant task's body, the task is held (back to
    its tenant's queue, no retry counted) and runs again from the start later."""

    def __init__(self, context_id: str, reason: str) -> None:
        super().__init__(f"tenant {context_id} is not available: {reason}")
        self.context_id = context_id
        self.reason = reason

    def __reduce__(self) -> tuple[type[TenantUnavailable], tuple[str, str]]:
        # Pickled whole (a result backend, an eager call): not from its message alone.
        return type(self), (self.context_id, self.reason)


class TenantDeleted(TenantUnavailable):
    """The tenant is deleted (or its state says drop): raised out of a tenant task's
    body, the task is dropped and dead-lettered."""


class TenantRateLimited(TenantUnavailable):
    """The tenant's API answered 429: the tenant is paused for every worker for
    ``retry_after`` seconds (``Retry-After``), then resumes by itself."""

    def __init__(self, context_id: str, reason: str, retry_after: float) -> None:
        super().__init__(context_id, reason)
        self.retry_after = retry_after

    def __reduce__(self) -> Any:
        return type(self), (self.context_id, self.reason, self.retry_after)


class TenantMisdirected(TenantGateError):
    """The tenant's API answered 421 Misdirected Request again after its state was
    refreshed (or for a URL that is not on its API): the request was not retried more."""

    def __init__(self, context_id: str, url_host: str, api_host: str, message: str) -> None:
        super().__init__(f"tenant {context_id}: {message}")
        self.context_id = context_id
        self.url_host = url_host
        self.api_host = api_host
        self.message = message

    def __reduce__(self) -> Any:
        return type(self), (self.context_id, self.url_host, self.api_host, self.message)
