"""The webhook's signing keys under load (part of ``python -m bench webhook``).

- **Key cache, PyJWKClient vs our own**: the same webhook with PyJWT's
  ``PyJWKClient`` as its key source (a second server, same core) against the
  package's ``SigningKeys`` (fetched in the background), same run, same load.
- **Rotation**: at 1,000 a second, half-way through, every other notification is
  signed with a key the JWKS publishes only now (an unknown ``kid``): the others must
  not wait for its fetch (their p99 against the phase without rotation).
- **JWKS slow (10 s) and JWKS down**: a fetch is asked for (by one unknown ``kid``)
  while the JWKS answers in 10 s, or 503; notifications with known keys at 1,000 a
  second must go on as before.

A fetch asked for by an unknown kid is allowed once every 10 s (SigningKeys'
``refetch_every``): the phases that need one wait for that much time to pass.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from bench.results import Result, Spread
from bench.webhook import (
    CLIENTS,
    CONNECTIONS,
    GOAL_P99_MS,
    RATE,
    Connection,
    Phase,
    closed_loop,
    encode,
    notifications,
    open_loop,
    phase,
    start_server,
)
from celery_tenant_gate.testing import FakeSuperOffice, Reply
from celery_tenant_gate.testing.superoffice import generate_key

#: SigningKeys' refetch_every, plus a margin.
REFETCH_EVERY = 10.5


@dataclass(frozen=True)
class Setup:
    """The run's Redis, key prefix, fake SuperOffice and own-cache server."""

    redis_url: str
    prefix: str
    superoffice: FakeSuperOffice
    pid: int
    port: int


@dataclass
class KeyPhases:
    phases: dict[str, Phase] = field(default_factory=dict)
    #: Notifications answered 202 (each queued a control task).
    accepted: int = 0
    #: Which requests of the rotation phase carried the new kid.
    rotated: list[bool] = field(default_factory=list)

    def results(self, main: dict[str, Phase]) -> list[Result]:
        own, own_rate = main["verified throughput"], main["verified at rate"]
        theirs, their_rate = (
            self.phases["pyjwkclient throughput"],
            self.phases["pyjwkclient at rate"],
        )
        rotation = self.phases["rotation at rate"].samples
        known = Spread.of([t for t, new in zip(rotation, self.rotated, strict=True) if not new])
        new = Spread.of([t for t, new in zip(rotation, self.rotated, strict=True) if new])
        base_p99 = own_rate.latency.p99 * 1e3
        rows = [
            Result(
                name="webhook.pyjwkclient_verified_per_second",
                figure=theirs.rate,
                unit="notifications/s",
                baseline_name="own key cache (SigningKeys), same run",
                baseline=own.rate,
                ratio=theirs.rate / own.rate,
                goal="informational (choice of key cache)",
                met=True,
            ),
            Result(
                name=f"webhook.pyjwkclient_p99_at_{RATE:.0f}_per_second",
                figure=their_rate.latency.p99 * 1e3,
                unit="ms",
                baseline_name="own key cache (SigningKeys), same run",
                baseline=base_p99,
                ratio=their_rate.latency.p99 / own_rate.latency.p99,
                goal="informational (choice of key cache)",
                met=True,
            ),
            Result(
                name="webhook.p99_known_kid_while_keys_rotate",
                figure=known.p99 * 1e3,
                unit="ms",
                baseline_name="verified at rate, no rotation",
                baseline=base_p99,
                ratio=known.p99 * 1e3 / base_p99,
                goal=f"p99 < {GOAL_P99_MS:.0f} ms",
                met=known.p99 * 1e3 < GOAL_P99_MS,
            ),
            Result(
                name="webhook.max_new_kid_while_keys_rotate",
                figure=new.max * 1e3,
                unit="ms",
                baseline_name="verified at rate, no rotation (max)",
                baseline=own_rate.latency.max * 1e3,
                ratio=new.max / own_rate.latency.max,
                goal="informational (waits for one JWKS fetch)",
                met=True,
            ),
        ]
        for label in ("jwks slow (10 s)", "jwks down (503)"):
            p99 = self.phases[label].latency.p99 * 1e3
            rows.append(
                Result(
                    name=f"webhook.p99_known_kid_{label.split(' (')[0].replace(' ', '_')}",
                    figure=p99,
                    unit="ms",
                    baseline_name="verified at rate, JWKS fine",
                    baseline=base_p99,
                    ratio=p99 / base_p99,
                    goal=f"p99 < {GOAL_P99_MS:.0f} ms",
                    met=p99 < GOAL_P99_MS,
                )
            )
        return rows


def key_phases(stack: ExitStack, setup: Setup, count: int) -> KeyPhases:
    so = setup.superoffice
    out = KeyPhases()
    first = 1_000_000  # tenants not used by the main phases
    their, their_port = start_server(stack, setup.redis_url, setup.prefix, so, "pyjwkclient")
    batch = [encode("/hook", b) for b in notifications(so, 200 + 2 * count, first)]
    out.accepted += len(batch)
    phase(their.pid, closed_loop(their_port, batch[:200], CLIENTS))  # warm-up
    out.phases["pyjwkclient throughput"] = phase(
        their.pid, closed_loop(their_port, batch[200 : 200 + count], CLIENTS)
    )
    out.phases["pyjwkclient at rate"] = phase(
        their.pid, open_loop(their_port, batch[200 + count :], RATE, CONNECTIONS)
    )
    first += len(batch)

    # Rotation: a key published now, unknown to the server until it fetches.
    new_key = generate_key()
    so.publish_key("rotated", new_key.public_key())
    old = notifications(so, count, first)
    new = notifications(so, count, first + count, key=new_key, kid="rotated")
    out.rotated = [n >= count // 2 and n % 2 == 0 for n in range(count)]
    mixed = [encode("/hook", (new if r else old)[n]) for n, r in enumerate(out.rotated)]
    out.accepted += len(mixed)
    asked = time.monotonic()
    out.phases["rotation at rate"] = phase(
        setup.pid, open_loop(setup.port, mixed, RATE, CONNECTIONS)
    )
    first += 2 * count

    for label, reply in (
        ("jwks slow (10 s)", Reply(delay=10.0)),
        ("jwks down (503)", Reply(status=503, body=b"down")),
    ):
        time.sleep(max(0.0, asked + REFETCH_EVERY - time.monotonic()))  # see the docstring
        so.script_jwks(reply)
        known = [encode("/hook", b) for b in notifications(so, count, first)]
        unknown = encode("/hook", notifications(so, 1, first + count, kid="unknown")[0])
        out.accepted += len(known)
        asked = time.monotonic()
        out.phases[label] = phase(
            setup.pid,
            _with_one_unknown(setup.port, unknown, open_loop(setup.port, known, RATE, CONNECTIONS)),
        )
        first += count + 1
    return out


async def _with_one_unknown(
    port: int, unknown: bytes, measure: Coroutine[Any, Any, list[float]]
) -> list[float]:
    """*measure*, while one request with an unknown kid makes the server fetch its JWKS
    (its own answer, 401 or 503, is not measured)."""
    conn = await Connection.open(port)
    try:
        fetching = asyncio.create_task(conn.post(unknown, expect=None))
        await asyncio.sleep(0.05)  # its fetch under way before the load starts
        latencies = await measure
        await fetching
    finally:
        conn.close()
    return latencies
