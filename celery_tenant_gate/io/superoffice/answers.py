"""Reading a State API answer: its body (size-capped), its state document, its
``Retry-After``."""

from __future__ import annotations

import json
import re
import time
from dataclasses import replace
from email.utils import parsedate_to_datetime
from typing import Any

import requests

from celery_tenant_gate.model.errors import (
    StateAPIResponseError,
    StateAPIUnavailable,
    TenantMismatch,
)
from celery_tenant_gate.model.states import StateDocumentError, TenantState, parse_state_document

#: A State API document is a few hundred bytes; refuse to read megabytes of garbage.
MAX_BODY_BYTES = 64 * 1024


def read_body(context_id: str, response: requests.Response) -> bytes:
    """The body, read to its end; more than :data:`MAX_BODY_BYTES` is garbage."""
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


def parse_answer(context_id: str, body: bytes) -> TenantState:
    """The state in *body*, about *context_id* (a document about another tenant is a
    :class:`TenantMismatch`: see why there)."""
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


def retry_after_seconds(value: str | None) -> float | None:
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
