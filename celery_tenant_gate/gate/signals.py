"""Signals, Celery style: ``@task_held.connect`` and the receiver gets keyword arguments.

Every signal is sent with ``sender`` = the tenant id and ``context_id`` = the same,
plus the arguments listed, in the process (and thread) where it happened: a task
held by the consumer is told in the worker's main process, a resume by the control
task in a pool process, a ``gate.resume`` by hand in your own process (the README's
"Signals, logs and metrics" has the table). Receivers' exceptions are logged and
swallowed (as Celery does): a receiver cannot stop the gate.
"""

from __future__ import annotations

from celery.utils.dispatch import Signal

#: A tenant was paused (``reason``, ``by``).
tenant_paused = Signal(name="tenant_paused", providing_args={"context_id", "reason", "by"})
#: A tenant was resumed; its held tasks were released (``released``: how many).
tenant_resumed = Signal(name="tenant_resumed", providing_args={"context_id", "released"})
#: A tenant was found deleted: its work is dropped from now on (``state``).
tenant_deleted = Signal(name="tenant_deleted", providing_args={"context_id", "state"})
#: A task was held in its tenant's queue (``task_id``, ``task_name``, ``queue``, ``reason``).
task_held = Signal(
    name="task_held", providing_args={"context_id", "task_id", "task_name", "queue", "reason"}
)
#: A held task went back to its queue (``task_id``, ``task_name``, ``queue``: the queue
#: it went back to, or its routing key on RabbitMQ). One per task, once it is handed back.
task_released = Signal(
    name="task_released", providing_args={"context_id", "task_id", "task_name", "queue"}
)
#: A task was dropped (``task_id``, ``task_name``, ``reason``).
task_dropped = Signal(
    name="task_dropped", providing_args={"context_id", "task_id", "task_name", "reason"}
)
#: A tenant moved to another server (``endpoint``, ``api``).
tenant_moved = Signal(name="tenant_moved", providing_args={"context_id", "endpoint", "api"})
#: A tenant was restored from a backup: its data changed under you (``state``).
tenant_backup_restored = Signal(
    name="tenant_backup_restored", providing_args={"context_id", "state"}
)
#: The shared store lost its data (restarted empty, flushed, failed over): sent once
#: per process that notices, with ``sender`` = the store's key prefix (not a tenant),
#: ``lost_epoch`` (the epoch this process knew) and ``epoch`` (the store's now, or
#: ``"none"``). See :mod:`celery_tenant_gate.gate.storeloss`.
store_lost = Signal(name="store_lost", providing_args={"lost_epoch", "epoch"})
