"""The webhook receiver, free of any web framework: a request in, a response out.

The adapters in :mod:`celery_tenant_gate.web` turn a framework's request into a
call of :meth:`WebhookReceiver.handle` and its :class:`WebhookResponse` back into
the framework's response. What it answers:

=====  ===========================================================================
202    ``{"status": "accepted"}``: checked and queued
400    the body is not a notification (the answer names the field at fault), or
       shorter than its ``Content-Length``
401    the token is not a valid SuperOffice token for this tenant (the reason is
       logged, never told)
405    not a POST; 413 larger than ``max_body``; 415 not ``application/json``
409    the token was used before (by this notification or another body): one token,
       one notification
503    the notification could not be queued, or SuperOffice's signing keys could not
       be fetched: the sender should retry
=====  ===========================================================================

Nothing is queued for any 4xx answer.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from celery_tenant_gate.io.metrics import metrics
from celery_tenant_gate.io.superoffice.tokens import (
    KeyPending,
    KeysUnavailable,
    TokenRejected,
    TokenVerifier,
    token_fingerprint,
)
from celery_tenant_gate.model.notification import (
    BadNotification,
    Notification,
    parse_notification,
)

from .responses import (
    ACCEPTED,
    KEY_PENDING,
    REPLAY,
    WebhookResponse,
    error,
    is_json,
    unavailable,
)

__all__ = ["KEY_PENDING", "Checked", "WebhookReceiver", "WebhookRequest", "WebhookResponse"]

logger = logging.getLogger(__name__)

#: Queue one checked notification (with its token's claims); raise if it could not be.
Enqueue = Callable[[Notification, dict[str, Any]], None]
#: True if *fingerprint* was recorded before; else record it for *ttl* seconds. Atomic.
SeenBefore = Callable[[str, float], bool]
#: Un-record a fingerprint (its notification could not be queued after all).
Forget = Callable[[str], None]


class WebhookRequest(NamedTuple):
    """What the receiver needs of one HTTP request (*body* ``None``: not read)."""

    method: str
    content_type: str | None
    body: bytes | None
    content_length: int | None


@dataclass(frozen=True)
class Checked:
    """A notification that passed every check, to be recorded and queued."""

    notification: Notification
    #: The claims of its verified token.
    claims: dict[str, Any]
    #: What identifies it for the replay record (its token, hashed).
    fingerprint: str
    #: Seconds to remember it: its token's remaining lifetime.
    ttl: float


#: Record and queue checked notifications, each in one step (both or neither). For
#: each, in order: True if queued now, False if recorded before (nothing queued),
#: ``None`` if that cannot be done in one step now (then *seen_before*, *enqueue* and
#: *forget* are used), or the exception that stopped it (nothing recorded or queued).
Keep = Callable[[Sequence[Checked]], Sequence[bool | Exception | None]]


class WebhookReceiver:
    """Checks SuperOffice state-change notifications and queues the good ones, once each.

    *enqueue* queues a checked notification; when it raises, the answer is 503 so that
    SuperOffice retries. *seen_before* remembers which notifications were queued
    already (for as long as their token is valid), and *forget* un-records one whose
    queuing failed, so that the retry is not taken for a duplicate (give it: without
    it, such a retry is answered as a duplicate and lost). *keep*, when given, does
    the recording and the queuing in one step where it can (one Redis round trip);
    replacing *enqueue*, *seen_before* or *forget* afterwards drops it, as it stands
    for them. Build one for a Celery app with
    :func:`celery_tenant_gate.webhook_app.receiver_for`::

        receiver = WebhookReceiver(verifier, enqueue, seen_before, forget=forget)
        response = receiver.handle("POST", "application/json", body, len(body))
    """

    #: Records and queues in one step where it can; ``None``: the three steps.
    keep: Keep | None

    def __init__(
        self,
        verifier: TokenVerifier,
        enqueue: Enqueue,
        seen_before: SeenBefore,
        *,
        forget: Forget | None = None,
        keep: Keep | None = None,
        max_body: int = 65_536,
        pattern: re.Pattern[str] | None = None,
    ) -> None:
        self.verifier = verifier
        self.enqueue = enqueue
        self.seen_before = seen_before
        self.forget = forget
        self.keep = keep
        #: Largest body accepted, in bytes; adapters read at most one byte more.
        self.max_body = max_body
        self.pattern = pattern

    @property
    def enqueue(self) -> Enqueue:
        """Queues a checked notification (setting it drops :attr:`keep`)."""
        return self._enqueue

    @enqueue.setter
    def enqueue(self, enqueue: Enqueue) -> None:
        self._enqueue = enqueue
        self.keep = None

    @property
    def seen_before(self) -> SeenBefore:
        """Records a fingerprint unless it was recorded (setting it drops :attr:`keep`)."""
        return self._seen_before

    @seen_before.setter
    def seen_before(self, seen_before: SeenBefore) -> None:
        self._seen_before = seen_before
        self.keep = None

    @property
    def forget(self) -> Forget | None:
        """Un-records a fingerprint (setting it drops :attr:`keep`)."""
        return self._forget_step

    @forget.setter
    def forget(self, forget: Forget | None) -> None:
        self._forget_step = forget
        self.keep = None

    def close(self) -> None:
        """Stop the background work of the token verifier (the JWKS fetching thread)."""
        self.verifier.close()

    def handle(
        self,
        method: str,
        content_type: str | None,
        body: bytes | None,
        content_length: int | None,
    ) -> WebhookResponse:
        """Answer one request. *body* may be ``None`` when it was not read (not a POST)."""
        return self.handle_many([WebhookRequest(method, content_type, body, content_length)])[0]

    def handle_many(
        self, requests: Sequence[WebhookRequest], *, wait_for_keys: bool = True
    ) -> list[WebhookResponse]:
        """Answer several requests, each as :meth:`handle` would: the notifications that
        pass the checks are recorded and queued together (one :attr:`keep` call, one
        Redis round trip for all of them where it can be done in one step).

        Without *wait_for_keys*, a request whose signing key is being fetched is
        answered :data:`KEY_PENDING` at once (nothing done): handle it again, alone,
        where waiting for the key holds up no other request.
        """
        answers = [self._check(*request, wait=wait_for_keys) for request in requests]
        checked = [answer for answer in answers if isinstance(answer, Checked)]
        queued = iter(self._queue(checked) if checked else ())
        responses = [next(queued) if isinstance(a, Checked) else a for a in answers]
        for response in responses:
            if response is not KEY_PENDING:
                metrics().webhook_response(response.status)
        return responses

    def _check(
        self,
        method: str,
        content_type: str | None,
        body: bytes | None,
        content_length: int | None,
        *,
        wait: bool = True,
    ) -> WebhookResponse | Checked:
        if method.upper() != "POST":
            return error(405, "only POST is allowed", headers={"Allow": "POST"})
        if (content_length is not None and content_length > self.max_body) or (
            body is not None and len(body) > self.max_body
        ):
            return error(413, f"the body is larger than {self.max_body} bytes")
        if body is not None and content_length is not None and len(body) < content_length:
            # The client went away mid-body: what came is not what was sent.
            return error(400, f"the body ended after {len(body)} of {content_length} bytes")
        if not is_json(content_type):
            return error(415, "the body must be application/json")
        try:
            notification = parse_notification(body or b"", pattern=self.pattern)
        except BadNotification as exc:
            return error(exc.status, exc.message, field=exc.field)
        return self._verify(notification, wait)

    def _verify(self, notification: Notification, wait: bool) -> WebhookResponse | Checked:
        try:
            if not notification.token:
                raise TokenRejected("the notification carries no token")
            claims = self.verifier.verify(notification.token, notification.context_id, wait=wait)
        except TokenRejected as exc:
            logger.warning(
                "tenant-gate: refused a %s notification for %s: %s",
                notification.change_type.name,
                notification.context_id,
                exc.reason,
            )
            return error(
                401, "invalid token", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
            )
        except KeyPending:
            return KEY_PENDING
        except KeysUnavailable as exc:
            logger.error(
                "tenant-gate: cannot check a notification for %s: %s", notification.context_id, exc
            )
            return error(
                503,
                "SuperOffice's signing keys could not be fetched; retry later",
                headers={"Retry-After": "5"},
            )
        # The token alone: one token is acted on once, whatever body it comes with.
        fingerprint = token_fingerprint(notification.token)
        return Checked(notification, claims, fingerprint, self.verifier.ttl(claims))

    def _queue(self, checked: list[Checked]) -> list[WebhookResponse]:
        kept: Sequence[bool | Exception | None] = [None] * len(checked)
        if self.keep is not None:
            try:
                kept = self.keep(checked)
            except Exception as exc:
                kept = [exc] * len(checked)
        responses = []
        for one, outcome in zip(checked, kept, strict=True):
            if outcome is None:
                responses.append(self._queue_in_steps(one))
            elif isinstance(outcome, Exception):
                logger.error(
                    "tenant-gate: could not queue notification for %s",
                    one.notification.context_id,
                    exc_info=outcome,
                )
                responses.append(unavailable())
            else:
                responses.append(_answer_kept(one.notification, outcome))
        return responses

    def _queue_in_steps(self, checked: Checked) -> WebhookResponse:
        notification, fingerprint = checked.notification, checked.fingerprint
        ctx = notification.context_id
        try:
            # Recorded before queuing, so that two copies arriving at once are queued
            # once; undone below if queuing fails.
            if self.seen_before(fingerprint, checked.ttl):
                return _answer_kept(notification, False)
        except Exception:
            logger.exception("tenant-gate: could not check notification for %s for replay", ctx)
            return unavailable()
        try:
            self.enqueue(notification, checked.claims)
        except Exception:
            logger.exception("tenant-gate: could not queue notification for %s", ctx)
            self._forget(fingerprint, ctx)
            return unavailable()
        return _answer_kept(notification, True)

    def _forget(self, fingerprint: str, ctx: str) -> None:
        if self.forget is None:
            return
        try:
            self.forget(fingerprint)
        except Exception:
            logger.exception(
                "tenant-gate: could not un-record a notification for %s; "
                "its retry will be taken for a duplicate",
                ctx,
            )


def _answer_kept(notification: Notification, queued: bool) -> WebhookResponse:
    ctx = notification.context_id
    if not queued:
        logger.warning(
            "tenant-gate: refused a %s notification for %s: its token was used before",
            notification.change_type.name,
            ctx,
        )
        return REPLAY
    logger.info("tenant-gate: queued a %s notification for %s", notification.change_type.name, ctx)
    return ACCEPTED
