"""What can go wrong in ``celery tenant-gate``, as errors a user can act on.

Each :class:`AdminError` carries the ``exit_code`` the command exits with; any other UI
can show its message as it is (it names the tenant, the setting or the URL).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import redis
from kombu.exceptions import OperationalError

from celery_tenant_gate.model.errors import (
    ConfigError,
    InvalidTenantId,
    StateAPIError,
    TenantGateError,
)

__all__ = [
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "AdminError",
    "Unavailable",
    "UnknownTenant",
    "failures",
    "unknown_tenant",
    "unknown_tenants",
]

#: Done.
EXIT_OK = 0
#: Bad usage or input: an unknown option, a malformed tenant id, a bad setting, or a
#: confirmation not given. Nothing was changed.
EXIT_USAGE = 1
#: Unknown tenant: the shared store has no record of it and it has no held or dropped
#: task. (Not from ``check``: the State API answers State Unknown for a tenant it does
#: not know, and its 404 means a wrong URL or an outage: :data:`EXIT_UNAVAILABLE`.)
EXIT_NOT_FOUND = 2
#: Redis, the broker or the State API could not be reached or gave no usable answer.
EXIT_UNAVAILABLE = 3


class AdminError(TenantGateError):
    """A failure the user can act on; the command prints it and exits with ``exit_code``."""

    exit_code = EXIT_USAGE


class UnknownTenant(AdminError):
    """The tenant is unknown to the shared store (or, for ``check``, to the State API)."""

    exit_code = EXIT_NOT_FOUND


class Unavailable(AdminError):
    """Redis, the broker or the State API could not be reached or gave no usable answer."""

    exit_code = EXIT_UNAVAILABLE


def unknown_tenant(ctx: str) -> UnknownTenant:
    """The tenant *ctx* is unknown to the shared store."""
    return UnknownTenant(
        f"unknown tenant {ctx}: the shared store has no record of it and it has no held or "
        f"dropped task (check {ctx} asks the State API)"
    )


def unknown_tenants(ctxs: Sequence[str]) -> UnknownTenant:
    """The tenants *ctxs* (one or more) are unknown to the shared store."""
    if len(ctxs) == 1:
        return unknown_tenant(ctxs[0])
    return UnknownTenant(
        f"unknown tenants {', '.join(ctxs)}: the shared store has no record "
        "of them and they have no held or dropped task"
    )


@contextmanager
def failures(redis_url: Callable[[], str], broker_url: Callable[[], str]) -> Iterator[None]:
    """The errors a user can act on, as :class:`AdminError`: no traceback.

    *redis_url* and *broker_url* give the URLs (password masked) to name, asked only
    when a connection failed.
    """
    try:
        yield
    except (InvalidTenantId, ConfigError) as exc:
        raise AdminError(str(exc)) from None
    except StateAPIError as exc:
        raise Unavailable(str(exc)) from None
    except TimeoutError as exc:  # a socket, or another process moving the held tasks
        raise Unavailable(
            f"timed out: {exc} (Redis at {redis_url()}, broker at {broker_url()}); try again"
        ) from None
    except (redis.RedisError, OperationalError, ConnectionError) as exc:
        raise Unavailable(
            f"lost the connection to Redis ({redis_url()}) or the broker ({broker_url()}): {exc}"
        ) from None
    except AdminError:
        raise
    except TenantGateError as exc:  # e.g. a release whose tasks lead nowhere
        raise AdminError(str(exc)) from None
    except Exception as exc:  # the broker refused something (an AMQP channel error)
        if getattr(exc, "reply_code", None) is None:
            raise
        raise Unavailable(f"the broker at {broker_url()} refused: {exc}") from None
