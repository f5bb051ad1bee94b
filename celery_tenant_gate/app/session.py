"""A ``requests.Session`` bound to one tenant: every request goes to the tenant's
current ``Api`` and is preceded by the gate's cached state check.

Inside a tenant task: ``self.tenant.session``; elsewhere (web views, scripts):
:func:`tenant_session`. ::

    session = self.tenant.session
    session.headers["Authorization"] = f"Bearer {token_for(context_id)}"
    page = session.get("v1/Contact", params={"$top": 200}).json()

- A path (``"v1/Contact/5"``) is joined under the tenant's ``Api``; an absolute URL
  (a next-page link) is sent as it is.
- Before each request, the state look-up the gate uses (a dict look-up when cached):
  a tenant that does not run raises :class:`~.errors.TenantUnavailable` (deleted:
  :class:`~.errors.TenantDeleted`) and nothing is sent.
- 421 Misdirected Request: the State API is asked again, the request goes once more
  to the new ``Api``; a second 421 raises :class:`~.errors.TenantMisdirected`.
- 429 Too Many Requests: the tenant is paused for every worker until its
  ``Retry-After`` (it resumes by itself), and :class:`~.errors.TenantRateLimited`
  is raised.
- 502/503/504 to an idempotent request: retried by urllib3 (bounded, see
  :func:`retry_policy`).

Authentication is the caller's (``session.headers``, ``session.auth``). Nothing here
logs a header, a query string or a body.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from celery_tenant_gate.config.reading import gate_config
from celery_tenant_gate.gate.backoff import back_off
from celery_tenant_gate.gate.lookup import TenantStates
from celery_tenant_gate.gate.report import why
from celery_tenant_gate.io.superoffice.answers import retry_after_seconds
from celery_tenant_gate.model.apiurl import api_url, host_of, is_absolute, rebase
from celery_tenant_gate.model.errors import (
    TenantDeleted,
    TenantMisdirected,
    TenantRateLimited,
    TenantUnavailable,
)
from celery_tenant_gate.model.ids import compile_pattern, validate_tenant_id
from celery_tenant_gate.model.verdicts import Verdict

from .singletons import tenant_states

logger = logging.getLogger(__name__)

#: (connect, read) seconds, when a request gives no ``timeout``: every wait is bounded.
DEFAULT_TIMEOUT = (5.0, 60.0)
#: The pause after a 429 without a usable ``Retry-After`` (seconds).
RATE_LIMIT_PAUSE = 10.0
#: The longest pause a 429's ``Retry-After`` makes (seconds).
RATE_LIMIT_PAUSE_MAX = 3600.0
_MISDIRECTED, _TOO_MANY = 421, 429


class BoundedRetry(Retry):
    """urllib3's ``Retry``, sleeping at most :attr:`retry_after_cap` for a
    ``Retry-After``: a worker slot never sleeps long on a 503's say-so. A 429 is never
    retried here (urllib3 would sleep its ``Retry-After``): it pauses the tenant."""

    retry_after_cap = 5.0
    RETRY_AFTER_STATUS_CODES = frozenset({503})

    def get_retry_after(self, response: Any) -> float | None:
        seconds = super().get_retry_after(response)
        return None if seconds is None else min(seconds, self.retry_after_cap)


def retry_policy(retries: int = 2, backoff: float = 0.2) -> Retry:
    """The retries of a tenant session: *retries* times for idempotent methods (GET,
    HEAD, PUT, DELETE, OPTIONS, TRACE) on 502, 503 and 504 and on connection or read
    errors, with exponential back-off (at most 2 s) and ``Retry-After`` (at most 5 s).
    POST and PATCH are retried only when the connection failed before sending."""
    return BoundedRetry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        other=0,
        allowed_methods=Retry.DEFAULT_ALLOWED_METHODS,
        status_forcelist=(502, 503, 504),
        backoff_factor=backoff,
        backoff_max=2.0,
        respect_retry_after_header=True,
        raise_on_status=False,  # the last answer is returned, as without retries
    )


def make_adapter(pool_size: int = 10) -> HTTPAdapter:
    """A connection pool per host (urllib3 keeps one per scheme, host and port)."""
    return HTTPAdapter(
        pool_connections=pool_size, pool_maxsize=pool_size, max_retries=retry_policy()
    )


def shared_adapter(app: Any) -> HTTPAdapter:
    """The app's connection pools in this process (made again after a fork): every
    tenant session of the process reuses their connections."""
    held: tuple[int, HTTPAdapter] | None = getattr(app, "_tenant_gate_http", None)
    if held is None or held[0] != os.getpid():
        held = (os.getpid(), make_adapter())
        app._tenant_gate_http = held
    return held[1]


class TenantSession(requests.Session):
    """A ``requests.Session`` for one tenant (see the module's docstring).

    *wait*: on a cache miss, whether the state look-up may ask the State API and
    wait for it (outside tasks) or decides from what is stored (inside tasks, as the
    gate does). *released*: the task was held and released (it runs while its
    tenant's resume is under way).
    """

    def __init__(
        self,
        context_id: str,
        states: TenantStates,
        *,
        adapter: HTTPAdapter | None = None,
        wait: bool = True,
        released: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.context_id = context_id
        #: The ``timeout`` of a request that gives none.
        self.timeout: Any = DEFAULT_TIMEOUT
        self._states = states
        self._wait = wait
        self._released = released
        self._clock = clock
        self._owns_adapters = adapter is None
        if adapter is None:
            adapter = make_adapter()
        self.mount("https://", adapter)
        self.mount("http://", adapter)

    @property
    def api(self) -> str:
        """The tenant's current ``Api`` (checked: raises when the tenant does not run)."""
        return self._checked_api()

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        """As ``requests.Session.request``, for the tenant (see the module's docstring)."""
        if isinstance(url, bytes):
            url = url.decode()
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        api = self._checked_api()
        target = api_url(api, url)
        response = super().request(method, target, *args, **kwargs)
        if response.status_code == _MISDIRECTED:
            response = self._misdirected(
                response, method=method, url=url, target=target, api=api, args=args, kwargs=kwargs
            )
        if response.status_code == _TOO_MANY:
            self._rate_limited(response)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "tenant-gate: %s %s %s -> %d", self.context_id, _method(method),
                _where(target), response.status_code,
            )  # fmt: skip
        return response

    def close(self) -> None:
        if self._owns_adapters:  # a shared pool outlives the session
            super().close()

    # -- the state check ------------------------------------------------------------

    def _checked_api(self) -> str:
        known = self._states.known(self.context_id, wait=self._wait)
        verdict, record = known.verdict, known.record
        if verdict is Verdict.HOLD and self._released:
            verdict = self._states.policy.decide(record, self._clock(), released=True)
        state = record.state if record is not None else None
        if verdict is Verdict.RUN and state is not None and state.api:
            return state.api
        if verdict is Verdict.DROP:
            raise TenantDeleted(self.context_id, why(record))
        if verdict is Verdict.RUN:
            raise TenantUnavailable(self.context_id, "the State API gave no Api for it")
        raise TenantUnavailable(self.context_id, why(record))

    # -- what the tenant's API answers ------------------------------------------------

    def _misdirected(
        self,
        response: Any,
        *,
        method: str | bytes,
        url: str,
        target: str,
        api: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """421: the tenant moved. Ask the State API now (every worker learns the new
        ``Api`` from the store), and send the request once more, there."""
        response.close()
        self._states.refresh(self.context_id)
        new_api = self._checked_api()
        again = api_url(new_api, url) if not is_absolute(url) else rebase(url, api, new_api)
        ctx, old_host, new_host = self.context_id, host_of(target), host_of(new_api)
        if again is None:
            raise TenantMisdirected(
                ctx, old_host, new_host,
                f"421 Misdirected Request from {old_host}, for a URL that is not under the "
                f"tenant's Api (now on {new_host}): it cannot be moved there",
            )  # fmt: skip
        logger.info("tenant-gate: %s answered 421 on %s; again on %s", ctx, old_host, new_host)
        response = super().request(method, again, *args, **kwargs)
        if response.status_code == _MISDIRECTED:
            response.close()
            raise TenantMisdirected(
                ctx, old_host, new_host,
                f"421 Misdirected Request from {old_host}, and again from {new_host} "
                "after the State API was asked: the tenant's Api is wrong or moving",
            )  # fmt: skip
        return response

    def _rate_limited(self, response: Any) -> None:
        seconds = retry_after_seconds(response.headers.get("Retry-After"))
        if seconds is None:
            seconds = RATE_LIMIT_PAUSE
        seconds = min(seconds, RATE_LIMIT_PAUSE_MAX)
        response.close()
        reason = f"HTTP 429 from its API: Retry-After {seconds:g} s"
        back_off(self._states, self.context_id, seconds, reason, clock=self._clock)
        raise TenantRateLimited(self.context_id, reason, seconds)


def tenant_session(app: Any, context_id: str) -> TenantSession:
    """A :class:`TenantSession` for code outside tasks (web views, scripts): its state
    look-up asks the State API on a cache miss (bounded by the State API client's
    timeout). Raises :class:`~.errors.InvalidTenantId` for a malformed id.

    >>> with tenant_session(app, "Cust12345") as session:  # doctest: +SKIP
    ...     session.get("v1/Contact/5", headers={"Authorization": bearer}).json()
    """
    ctx = validate_tenant_id(context_id, compile_pattern(gate_config(app).tenant_id_pattern))
    return TenantSession(ctx, tenant_states(app), adapter=shared_adapter(app), wait=True)


def _method(method: str | bytes) -> str:
    return method.decode() if isinstance(method, bytes) else method


def _where(url: str) -> str:
    """*url* as logged: host and path, no user, password, query or fragment."""
    path = url.split("?", 1)[0].split("#", 1)[0]
    rest = path.split("://", 1)[-1]
    return host_of(url) + ("/" + rest.split("/", 1)[1] if "/" in rest else "")
