"""A client for SuperOffice's State API (``GET {base}/{ContextIdentifier}``).

Every failed call counts against the process's :class:`CircuitBreaker`, whatever the
failure: SuperOffice answers 200 for any tenant (``"State": "Unknown"`` for one it
does not know), so no failure is about the tenant; each says the API, or the way to
it, is not healthy. A ``Retry-After`` (on a 429 or a 5xx) holds every call of the
process until that moment.

The retries are a loop of our own, not urllib3's ``Retry`` on the adapter
(``status_forcelist``, ``backoff_factor``, ``respect_retry_after_header``), because
urllib3 retries inside one ``session.get``:

- it sleeps with ``time.sleep`` itself: the tests could inject no sleep without
  subclassing ``Retry`` and overriding its private sleep methods;
- the requests in between are invisible here: no latency and error metric per
  request, no log line per retry (urllib3 logs at DEBUG);
- between two attempts it cannot ask the breaker whether another thread was told
  ``Retry-After`` meanwhile (the hold is for the whole process);
- a ``Retry-After`` longer than a worker may wait is slept (up to its
  ``retry_after_max``), where this client gives up at once and leaves the wait to
  the breaker's hold;
- urllib3 2 does not wait before the first retry (``backoff_factor * 2 ** (n - 1)``,
  0 for the first); this client waits *backoff*, then doubles it;
- a body cut short fails while we read it (streamed, to cap its size), after urllib3
  has returned: a loop of ours would be needed for it anyway.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter

from celery_tenant_gate import __version__
from celery_tenant_gate.config.settings import GateConfig
from celery_tenant_gate.io.metrics import metrics
from celery_tenant_gate.model.errors import (
    CircuitOpen,
    StateAPIError,
    StateAPINotFound,
    StateAPIStatusError,
    StateAPIUnavailable,
)
from celery_tenant_gate.model.ids import compile_pattern, validate_tenant_id
from celery_tenant_gate.model.states import TenantState

from .answers import parse_answer, read_body, retry_after_seconds
from .circuit import CircuitBreaker

logger = logging.getLogger(__name__)

_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: The longest a ``Retry-After`` holds the calls of a process (seconds); a longer one
#: (a bogus header, a date far ahead) is cut to this, so that a broken proxy cannot
#: stop every look-up for hours. Tenants known keep their state meanwhile, within
#: ``tenant_gate_grace_period``.
MAX_RETRY_AFTER = 300.0


class StateClient:
    """Asks the State API for one tenant's state.

    One pooled ``requests`` session, shared by the threads of a process. Retries
    connection errors, timeouts, 5xx and 429 with exponential backoff, honouring
    ``Retry-After`` up to *backoff_max* within a call; a longer one fails the call,
    and the *breaker* refuses every call until then (cut to *retry_after_max*). Every
    other failure is a specific :class:`~celery_tenant_gate.model.errors.StateAPIError`,
    never a wrong state; each failed call counts against the *breaker*.

    >>> client = StateClient("https://online.superoffice.com/api/state")
    >>> client.get("Cust12345").running  # doctest: +SKIP
    True
    """

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float = 3.05,
        read_timeout: float = 10.0,
        retries: int = 2,
        backoff: float = 0.5,
        backoff_max: float = 10.0,
        retry_after_max: float = MAX_RETRY_AFTER,
        tenant_id_pattern: str | None = None,
        breaker: CircuitBreaker | None = None,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = (connect_timeout, read_timeout)
        self.retries = retries
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.retry_after_max = retry_after_max
        self.breaker = breaker
        self._pattern = compile_pattern(tenant_id_pattern) if tenant_id_pattern else None
        self._session = session
        self._own_session = session is None
        self._session_lock = threading.Lock()
        self._sleep = sleep

    @classmethod
    def from_config(cls, config: GateConfig) -> StateClient:
        return cls(
            config.state_api_base,
            connect_timeout=config.state_api_connect_timeout,
            read_timeout=config.state_api_read_timeout,
            retries=config.state_api_retries,
            backoff=config.state_api_backoff,
            backoff_max=config.state_api_backoff_max,
            tenant_id_pattern=config.tenant_id_pattern,
            breaker=CircuitBreaker(config.circuit_failure_threshold, config.circuit_reset_timeout),
        )

    @property
    def session(self) -> requests.Session:
        if self._session is None:
            with self._session_lock:
                if self._session is None:
                    session = requests.Session()
                    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=32, max_retries=0)
                    session.mount("https://", adapter)
                    session.mount("http://", adapter)
                    session.headers["User-Agent"] = f"celery-tenant-gate/{__version__}"
                    session.headers["Accept"] = "application/json"
                    self._session = session
        return self._session

    def forget_connections(self) -> None:
        """Drop pooled connections (after a fork they belong to the parent)."""
        if self._own_session:
            self._session = None
            self._session_lock = threading.Lock()

    def url_for(self, context_id: str) -> str:
        ctx = validate_tenant_id(context_id, self._pattern)
        return f"{self.base_url}/{quote(ctx, safe='')}"

    def get(self, context_id: str) -> TenantState:
        """The tenant's current state.

        Raises :class:`~celery_tenant_gate.model.errors.InvalidTenantId` before any call
        for a malformed id, :class:`~celery_tenant_gate.model.errors.CircuitOpen` before
        any call while the breaker refuses, and another
        :class:`~celery_tenant_gate.model.errors.StateAPIError` when no valid answer
        could be had.
        """
        url = self.url_for(context_id)
        breaker = self.breaker
        if breaker is not None and not breaker.allow():
            metrics().state_api_refused(CircuitOpen.__name__)
            wait = breaker.retry_in()
            held = breaker.held_for()
            why = (
                f"the State API asked (Retry-After) not to be called for {held:.1f}s more"
                if held
                else f"circuit open after repeated failures; next try in {wait:.1f}s"
            )
            raise CircuitOpen(context_id, why, retry_after=wait)
        try:
            state = self._get_with_retries(context_id, url)
        except StateAPIError as exc:
            if breaker is not None and breaker.record_failure():
                logger.warning(
                    "tenant-gate: State API failed %d times in a row (last: %s); no call "
                    "from this process for %.0fs",
                    breaker.threshold,
                    exc,
                    breaker.retry_in(),
                )
            raise
        if breaker is not None:
            breaker.record_success()
        return state

    def _get_with_retries(self, context_id: str, url: str) -> TenantState:
        attempt = 0
        while True:
            try:
                return self._get_once(context_id, url)
            except StateAPIUnavailable as exc:
                delay = self.backoff * (2**attempt)
                if exc.retry_after is not None:
                    delay = exc.retry_after
                if self.breaker is not None:  # a Retry-After another thread was told
                    delay = max(delay, self.breaker.held_for())
                if attempt >= self.retries or delay > self.backoff_max:
                    raise
                logger.info(
                    "tenant-gate: State API for %s unavailable (%s); retry %d/%d in %.2fs",
                    context_id,
                    exc,
                    attempt + 1,
                    self.retries,
                    delay,
                )
                self._sleep(delay)
                attempt += 1

    def _get_once(self, context_id: str, url: str) -> TenantState:
        started = time.perf_counter()
        error: str | None = None
        try:
            return self._request(context_id, url)
        except StateAPIError as exc:
            error = type(exc).__name__
            raise
        finally:
            metrics().state_api_request(time.perf_counter() - started, error)

    def _request(self, context_id: str, url: str) -> TenantState:
        try:
            response = self.session.get(url, timeout=self.timeout, stream=True)
        except requests.Timeout as exc:
            raise StateAPIUnavailable(context_id, f"timed out ({exc})") from exc
        except requests.RequestException as exc:
            raise StateAPIUnavailable(context_id, f"connection failed ({exc})") from exc
        with response:
            status = response.status_code
            if status in _RETRY_STATUSES:
                raise self._unavailable(context_id, status, response.headers.get("Retry-After"))
            if status == 404:
                raise StateAPINotFound(context_id, url)
            if status != 200:
                raise StateAPIStatusError(context_id, status, url)
            body = read_body(context_id, response)
        return parse_answer(context_id, body)

    def _unavailable(self, context_id: str, status: int, header: str | None) -> StateAPIUnavailable:
        """The error for a 429 or 5xx; a ``Retry-After`` holds every call from now."""
        retry_after = retry_after_seconds(header)
        if retry_after is None:
            return StateAPIUnavailable(context_id, f"HTTP {status}")
        if retry_after > self.retry_after_max:
            logger.warning(
                "tenant-gate: the State API asked to wait %.0fs (Retry-After: %s); waiting "
                "%.0fs, the most this client waits",
                retry_after,
                header,
                self.retry_after_max,
            )
            retry_after = self.retry_after_max
        if self.breaker is not None and retry_after > 0:
            self.breaker.hold(retry_after)
        return StateAPIUnavailable(
            context_id, f"HTTP {status}, Retry-After {retry_after:.1f}s", retry_after=retry_after
        )
