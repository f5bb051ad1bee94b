"""How a tenant travels with a task message, and how it is found again. Pure, no I/O.

The producer puts the tenant id in the message header :data:`HEADER`. The worker
looks for it wherever Celery may have put it: in the message headers (protocol 2),
in ``request.headers`` or as a request attribute (Celery moves custom headers
about between versions and on ``retry()``), and, for messages sent by name
without the header, in the task's tenant argument.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .errors import InvalidTenantId

#: The message header that carries the tenant id.
HEADER = TENANT_HEADER = "tenant_gate_ctx"
#: Set on a message that was held, so its history can be told: how many times, and
#: where it was meant to go (``exchange``, ``routing_key``).
HELD_COUNT_HEADER = "tenant_gate_held"
ROUTE_HEADER = "tenant_gate_route"
#: When the message was first held (Unix seconds): how long a held task has waited.
HELD_AT_HEADER = "tenant_gate_held_at"


def positional_index(fun: Callable[..., Any], name: str, bound: bool) -> int | None:
    """The position of parameter *name* in *fun*'s arguments (skipping ``self`` when
    *bound*), or None if it cannot be passed by position."""
    try:
        params = list(inspect.signature(fun).parameters.values())
    except (TypeError, ValueError):
        return None
    if bound and params:
        params = params[1:]
    for index, param in enumerate(params):
        if param.name == name:
            if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
                return index
            return None
    return None


def tenant_from_call(
    args: Sequence[Any] | None,
    kwargs: Mapping[str, Any] | None,
    arg_name: str | None,
    arg_index: int | None,
) -> Any:
    """The tenant named by a call's arguments, or None."""
    if not arg_name:
        return None
    if kwargs and arg_name in kwargs:
        return kwargs[arg_name]
    if arg_index is not None and args is not None and len(args) > arg_index:
        return args[arg_index]
    return None


def choose_tenant(explicit: Any, from_headers: Any, from_args: Any, task_name: str) -> Any:
    """Pick the one tenant of a call; raise if two sources disagree, or none gives one."""
    given = [value for value in (explicit, from_headers, from_args) if value is not None]
    if not given:
        raise InvalidTenantId(
            f"task {task_name} is tenant-scoped but no tenant was given: pass its "
            f"tenant argument, apply_async(..., tenant='Cust12345'), or the "
            f"{HEADER!r} header"
        )
    if any(value != given[0] for value in given[1:]):
        raise InvalidTenantId(f"task {task_name} was given two different tenants: {given!r}")
    return given[0]


def tenant_from_headers(headers: Mapping[str, Any] | None) -> Any:
    """The tenant in message headers, including headers nested by ``retry()``."""
    if not headers:
        return None
    value = headers.get(HEADER)
    if value is None:
        nested = headers.get("headers")
        if isinstance(nested, Mapping):
            value = nested.get(HEADER)
    return value


def tenant_from_request(request: Any) -> Any:
    """The tenant of a running task, from its ``self.request``."""
    value = getattr(request, HEADER, None)
    if value is None:
        value = tenant_from_headers(getattr(request, "headers", None))
    return value


def was_held(headers: Mapping[str, Any] | None) -> bool:
    """True when a message with these headers was held before (and so, if it is
    queued again, released)."""
    return bool(headers and headers.get(HELD_COUNT_HEADER))


def request_was_held(request: Any) -> bool:
    """:func:`was_held` for a running task's ``self.request``."""
    return bool(getattr(request, HELD_COUNT_HEADER, None)) or was_held(
        getattr(request, "headers", None)
    )
