"""A client for SuperOffice's State API (``GET {base}/{ContextIdentifier}``)."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter

from celery_tenant_gate import __version__
from celery_tenant_gate.config.settings import GateConfig
from celery_tenant_gate.io.metrics import metrics
from celery_tenant_gate.model.errors import (
    CircuitOpen,
    StateAPIError,
    StateAPIResponseError,
    StateAPIStatusError,
    StateAPIUnavailable,
    TenantMismatch,
    TenantNotFound,
)
from celery_tenant_gate.model.ids import compile_pattern, validate_tenant_id
from celery_tenant_gate.model.states import StateDocumentError, TenantState, parse_state_document

from .circuit import CircuitBreaker

logger = logging.getLogger(__name__)

_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: A State API document is a few hundred bytes; refuse to read megabytes of garbage.
MAX_BODY_BYTES = 64 * 1024


class StateClient:
    """Asks the State API for one tenant's state.

    One pooled ``requests`` session, shared by the threads of a process. Retries
    connection errors, timeouts, 5xx and 429 with exponential backoff, honouring
    ``Retry-After`` up to *backoff_max*; every other failure is a specific
    :class:`~celery_tenant_gate.errors.StateAPIError`, never a wrong state.

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

        Raises :class:`~celery_tenant_gate.errors.InvalidTenantId` before any call for
        a malformed id, and a :class:`~celery_tenant_gate.errors.StateAPIError`
        subclass when no valid answer could be had.
        """
        url = self.url_for(context_id)
        breaker = self.breaker
        if breaker is not None and not breaker.allow():
            metrics().state_api_refused(CircuitOpen.__name__)
            raise CircuitOpen(
                context_id,
                f"circuit open after repeated failures; next try in {breaker.retry_in():.1f}s",
                retry_after=breaker.retry_in(),
            )
        try:
            state = self._get_with_retries(context_id, url)
        except StateAPIUnavailable:
            if breaker is not None:
                breaker.record_failure()
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
            if status == 404:
                raise TenantNotFound(context_id, "the State API does not know this tenant")
            if status in _RETRY_STATUSES:
                raise StateAPIUnavailable(
                    context_id,
                    f"HTTP {status}",
                    retry_after=_retry_after(response.headers.get("Retry-After")),
                )
            if status != 200:
                raise StateAPIStatusError(context_id, status)
            body = _read_limited(context_id, response)
        return _parse(context_id, body)


def _read_limited(context_id: str, response: requests.Response) -> bytes:
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in response.iter_content(8192):
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise StateAPIResponseError(
                    context_id, f"answer larger than {MAX_BODY_BYTES} bytes"
                )
            chunks.append(chunk)
    except requests.RequestException as exc:
        raise StateAPIUnavailable(context_id, f"answer cut short ({exc})") from exc
    return b"".join(chunks)


def _parse(context_id: str, body: bytes) -> TenantState:
    try:
        data: Any = json.loads(body)
    except ValueError:
        preview = body[:60].decode("utf-8", "replace")
        raise StateAPIResponseError(
            context_id, f"answer is not JSON (starts with {preview!r})"
        ) from None
    try:
        state = parse_state_document(data)
    except StateDocumentError as exc:
        raise StateAPIResponseError(context_id, f"answer has the wrong shape: {exc}") from None
    if state.context_id.casefold() != context_id.casefold():
        raise TenantMismatch(
            context_id, f"answer is about tenant {state.context_id!r}, not {context_id!r}"
        )
    # Keep the id as we asked for it: it names our queues and keys.
    if state.context_id != context_id:
        state = replace(state, context_id=context_id)
    return state


_DIGITS = re.compile(r"\d+(\.\d+)?")


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if _DIGITS.fullmatch(value):
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
