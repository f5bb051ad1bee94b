"""Wiring a :class:`WebhookReceiver` to a Celery app: its settings, Redis and broker.

A web process that only receives notifications needs the broker and Redis, not the
worker side: this module imports none of it (no gate, look-up, task or worker).
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import redis

from . import metrics
from .config import CONTROL_TASK, PREFIX, GateConfig, gate_config
from .errors import ConfigError
from .ids import compile_pattern
from .notification import Notification
from .tokens import TokenVerifier
from .webhook import WebhookReceiver

_lock = threading.Lock()


def receiver_for(app: Any) -> WebhookReceiver:
    """The app's :class:`WebhookReceiver` (created on first use, one per process).

    Tokens are checked with the ``tenant_gate_webhook_*`` settings; replays are
    remembered in Redis (``{key_prefix}:seen:{fingerprint}``, for as long as the token
    is valid); a good notification is sent as the task ``tenant_gate.control`` to the
    ``tenant_gate_control_queue``.
    """
    with _lock:
        receiver: WebhookReceiver | None = getattr(app, "_tenant_gate_receiver", None)
        if receiver is None:
            config = gate_config(app)
            if config.metrics:
                metrics.enable()  # answers are counted by status
            receiver = _make_receiver(app, config)
            app._tenant_gate_receiver = receiver
        return receiver


def _make_receiver(app: Any, config: GateConfig) -> WebhookReceiver:
    if config.webhook_jwks_url and config.webhook_public_key:
        raise ConfigError(
            f"set {PREFIX}webhook_jwks_url or {PREFIX}webhook_public_key, not both: "
            "they are two sources of SuperOffice's signing key"
        )
    verifier = TokenVerifier(
        config.token_issuer,
        jwks_url=config.jwks_url,
        public_key_pem=config.webhook_public_key,
        audience=config.webhook_audience,
        leeway=config.webhook_leeway,
    )
    client = redis.Redis.from_url(config.require_redis_url())
    prefix = config.key_prefix

    def seen_before(fingerprint: str, ttl: float) -> bool:
        recorded = client.set(f"{prefix}:seen:{fingerprint}", 1, nx=True, ex=math.ceil(ttl))
        return not recorded

    def forget(fingerprint: str) -> None:
        client.delete(f"{prefix}:seen:{fingerprint}")

    def enqueue(notification: Notification, claims: dict[str, Any]) -> None:
        app.send_task(
            CONTROL_TASK,
            kwargs=control_kwargs(notification, claims),
            queue=config.control_queue,
            retry=True,
            retry_policy={"max_retries": 2},
        )

    return WebhookReceiver(
        verifier,
        enqueue,
        seen_before,
        forget=forget,
        max_body=config.webhook_max_body,
        pattern=compile_pattern(config.tenant_id_pattern),
    )


def control_kwargs(notification: Notification, claims: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of the control task for one notification."""
    iat = claims.get("iat")
    issued = float(iat) if isinstance(iat, int | float) and not isinstance(iat, bool) else None
    return {
        "change_type": int(notification.change_type),
        "context_id": notification.context_id,
        "public_endpoint": notification.public_endpoint,
        "version_name": notification.version_name,
        "file_version": notification.file_version,
        "token_iat": issued,
        "received_at": time.time(),
    }
