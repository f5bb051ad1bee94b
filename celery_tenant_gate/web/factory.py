"""Wiring a :class:`WebhookReceiver` to a Celery app: its settings, Redis and broker.

A web process that only receives notifications needs the broker and Redis, not the
worker side: this module imports none of it (no gate, look-up, task or worker).
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import redis

from celery_tenant_gate.config.reading import built_from_settings, gate_config
from celery_tenant_gate.config.settings import CONTROL_TASK, PREFIX, GateConfig
from celery_tenant_gate.io import metrics
from celery_tenant_gate.io.broker.amqp_queues import is_amqp
from celery_tenant_gate.io.broker.redis_control import (
    RedisControlQueue,
    redis_control_queue,
    task_kwargsrepr,
)
from celery_tenant_gate.io.superoffice.jwks import KeySource, SigningKeys, StaticKey
from celery_tenant_gate.io.superoffice.tokens import TokenVerifier
from celery_tenant_gate.model.errors import ConfigError
from celery_tenant_gate.model.ids import compile_pattern
from celery_tenant_gate.model.notification import Notification

from .receiver import Checked, WebhookReceiver

_lock = threading.Lock()


def receiver_for(app: Any) -> WebhookReceiver:
    """The app's :class:`WebhookReceiver` (created on first use, one per process).

    Tokens are checked with the ``tenant_gate_webhook_*`` settings (the JWKS fetched
    in the background from now on); used tokens are remembered in Redis
    (``{key_prefix}:seen:{fingerprint}``, for as long as the token is valid); a good
    notification is sent as the task ``tenant_gate.control`` to the
    ``tenant_gate_control_queue``. On a Redis broker the task message is written
    directly (:mod:`celery_tenant_gate.control_redis`), together with the replay
    record when the broker is the shared store's Redis; elsewhere it goes through kombu.
    """
    with _lock:
        receiver: WebhookReceiver | None = getattr(app, "_tenant_gate_receiver", None)
        if receiver is None:
            config = gate_config(app)
            if config.metrics:
                metrics.enable()  # answers are counted by status
            receiver = _make_receiver(app, config)
            built_from_settings(app, "the webhook receiver")
            app._tenant_gate_receiver = receiver
        else:
            gate_config(app)  # a setting changed since it was built raises ConfigError
        return receiver


def _make_receiver(app: Any, config: GateConfig) -> WebhookReceiver:
    if config.webhook_jwks_url and config.webhook_public_key:
        raise ConfigError(
            f"set {PREFIX}webhook_jwks_url or {PREFIX}webhook_public_key, not both: "
            "they are two sources of SuperOffice's signing key"
        )
    keys: KeySource
    if config.jwks_url is not None:
        keys = SigningKeys(
            config.jwks_url,
            refresh_every=config.webhook_jwks_refresh,
            allow_http=config.webhook_jwks_allow_http,
        )
        keys.start()  # fetched from now on, in the background
    else:
        keys = StaticKey(config.webhook_public_key or "")
    verifier = TokenVerifier(
        config.token_issuer,
        keys=keys,
        audience=config.webhook_audience,
        leeway=config.webhook_leeway,
        tenant_claim_required=not config.webhook_tokens_without_tenant,
    )
    client = redis.Redis.from_url(config.require_redis_url())
    prefix = config.key_prefix

    def record(fingerprint: str) -> str:
        return f"{prefix}:seen:{fingerprint}"

    def seen_before(fingerprint: str, ttl: float) -> bool:
        return not client.set(record(fingerprint), 1, nx=True, ex=math.ceil(ttl))

    def forget(fingerprint: str) -> None:
        client.delete(record(fingerprint))

    sender = ControlSender(app, config.control_queue)
    direct = _DirectQueue(app, config.control_queue, client)

    def enqueue(notification: Notification, claims: dict[str, Any]) -> None:
        queue = direct.get()
        if queue is None or queue.observed():
            sender.send(control_kwargs(notification, claims))
        else:
            queue.push(control_kwargs(notification, claims))

    def keep(checked: Sequence[Checked]) -> Sequence[bool | Exception | None]:
        queue = direct.get()
        if queue is None or not queue.same_as_store or queue.observed():
            return [None] * len(checked)  # a step a server: seen_before, enqueue, forget
        return queue.keep(
            [
                (record(one.fingerprint), one.ttl, control_kwargs(one.notification, one.claims))
                for one in checked
            ]
        )

    return WebhookReceiver(
        verifier,
        enqueue,
        seen_before,
        forget=forget,
        keep=keep,
        max_body=config.webhook_max_body,
        pattern=compile_pattern(config.tenant_id_pattern),
    )


class _DirectQueue:
    """:func:`redis_control_queue`, worked out at the first notification (it connects
    to the broker; a web app is often built before the broker can be reached). A
    failure is raised (the answer is 503) and tried again at the next notification."""

    def __init__(self, app: Any, queue: str, store: redis.Redis) -> None:
        self.app, self.queue, self.store = app, queue, store
        self._lock = threading.Lock()
        self._known = False
        self._queue: RedisControlQueue | None = None

    def get(self) -> RedisControlQueue | None:
        if not self._known:
            with self._lock:
                if not self._known:
                    self._queue = redis_control_queue(self.app, self.queue, self.store)
                    self._known = True
        return self._queue


class ControlSender:
    """Sends the control task to the control queue, as ``app.send_task`` would, doing
    once what need not be done for each notification (``python -m bench webhook``).

    - Producers are kept with their channel, one a sending thread at a time, on
      connections of their own. A producer of the app's pool loses its channel when
      given back, so each send through it opened a channel again (on Redis, a
      ``PING`` round trip).
    - The route to the control queue is worked out once.
    - ``kwargsrepr`` is a plain ``repr`` (cut at Celery's limit) instead of Celery's
      ``saferepr``, which costs more than the rest of the message.
    - No result is waited for, so the result backend is not asked to follow one.

    Publishing retries twice after a lost connection; if that fails the error is
    raised (the webhook answers 503) and the producer is thrown away.
    """

    #: Most idle producers kept; more concurrent senders get throw-away ones.
    KEEP = 16

    def __init__(self, app: Any, queue: str) -> None:
        self.app = app
        self._route = app.amqp.router.route({"queue": queue}, CONTROL_TASK, (), {}, None)
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        # RabbitMQ: wait for the broker's confirm, so that a kept connection the
        # broker dropped while idle fails the publish (and is retried on a new one)
        # instead of swallowing it: never a 202 for a notification the broker lacks.
        self._options = {"confirm_publish": True} if is_amqp(app) else None

    def send(self, kwargs: dict[str, Any]) -> str:
        """Publish one control task with *kwargs*; its task id."""
        amqp = self.app.amqp
        task_id = str(uuid.uuid4())
        message = amqp.create_task_message(
            task_id,
            CONTROL_TASK,
            (),
            kwargs,
            argsrepr="()",
            kwargsrepr=task_kwargsrepr(amqp, kwargs),
        )
        producer = self._take()
        try:
            amqp.send_task_message(
                producer,
                CONTROL_TASK,
                message,
                retry=True,
                retry_policy={"max_retries": 2},
                **self._route,
            )
        except BaseException:
            with contextlib.suppress(Exception):
                producer.connection.close()
            raise
        self._give_back(producer)
        return task_id

    def _take(self) -> Any:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        connection = self.app.connection_for_write(transport_options=self._options)
        return self.app.amqp.Producer(connection, auto_declare=False)

    def _give_back(self, producer: Any) -> None:
        with self._lock:
            if len(self._idle) < self.KEEP:
                self._idle.append(producer)
                return
        with contextlib.suppress(Exception):
            producer.connection.close()


def control_kwargs(notification: Notification, claims: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of the control task for one notification.

    Its time, which orders it against others of its tenant, is the token's signed
    ``iat``, never later than this process received it (``iat`` may be up to the
    leeway ahead of our clock): times SuperOffice signed or we measured, never a field
    of the body.
    """
    received = time.time()
    iat = claims.get("iat")
    issued = (
        min(float(iat), received)
        if isinstance(iat, int | float) and not isinstance(iat, bool)
        else None
    )
    return {
        "change_type": int(notification.change_type),
        "context_id": notification.context_id,
        "public_endpoint": notification.public_endpoint,
        "version_name": notification.version_name,
        "file_version": notification.file_version,
        "token_iat": issued,
        "received_at": received,
    }
