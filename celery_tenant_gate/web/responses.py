"""What the webhook answers: :class:`WebhookResponse` and the answers made once."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class WebhookResponse:
    """What to answer: a status, a JSON body and headers (``Content-Type`` included)."""

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)

    @cached_property
    def raw_headers(self) -> tuple[tuple[bytes, bytes], ...]:
        """The headers as ASGI sends them: lower-case names, latin-1 bytes (a tuple:
        responses may be shared; an adapter sends a list of its own)."""
        return tuple(
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in self.headers.items()
        )

    @classmethod
    def json(
        cls, status: int, document: Mapping[str, Any], headers: Mapping[str, str] | None = None
    ) -> WebhookResponse:
        body = json.dumps(document, separators=(",", ":")).encode()
        # Read-only: some responses are made once and shared by every request.
        return cls(
            status,
            body,
            MappingProxyType(
                {
                    "Content-Type": "application/json",
                    "Content-Length": str(len(body)),
                    **(headers or {}),
                }
            ),
        )


#: The two answers to a kept notification (made once: they never change).
ACCEPTED = WebhookResponse.json(202, {"status": "accepted"})
REPLAY = WebhookResponse.json(409, {"error": "this token was used before"})
#: Not an answer to send: the request's signing key is being fetched (see handle_many).
KEY_PENDING = WebhookResponse.json(503, {"error": "the signing key is being fetched"})


def is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    media_type, _, parameters = content_type.partition(";")
    if media_type.strip().lower() != "application/json":
        return False
    for parameter in filter(None, (p.strip() for p in parameters.split(";"))):
        name, _, value = parameter.partition("=")
        # JSON is UTF-8 (RFC 8259): a charset parameter may only say so.
        if name.strip().lower() != "charset" or value.strip().strip('"').lower() != "utf-8":
            return False
    return True


def error(
    status: int,
    message: str,
    *,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> WebhookResponse:
    document: dict[str, Any] = {"error": message}
    if field is not None:
        document["field"] = field
    return WebhookResponse.json(status, document, headers)


def unavailable() -> WebhookResponse:
    return error(
        503, "the notification could not be queued; retry later", headers={"Retry-After": "5"}
    )
