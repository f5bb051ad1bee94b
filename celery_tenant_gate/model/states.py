"""The tenant state model: SuperOffice's states and the State API document, without I/O."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any


class State(enum.IntEnum):
    """A tenant's state, as SuperOffice's State API names it (values are its enum)."""

    #: Not a SuperOffice value: a state this package does not know (new, or garbage).
    #: Treated as "not running".
    UNRECOGNISED = -1
    UNKNOWN = 0
    PROVISIONING = 1
    RUNNING = 2
    DELETED = 3
    SUSPENDED = 4
    ONLINE_MAINTENANCE = 5
    OFFLINE_MAINTENANCE = 6
    PROVISIONING_FAILED = 8
    DELETING = 10
    DELETE_FAILED = 11
    MIGRATION_PENDING = 12

    @property
    def api_name(self) -> str:
        """The name the State API uses, e.g. ``"OfflineMaintenance"``."""
        return _API_NAMES[self]

    @property
    def is_running(self) -> bool:
        """True for the states in which SuperOffice says the tenant's APIs work."""
        return self in (State.RUNNING, State.ONLINE_MAINTENANCE)

    @classmethod
    def parse(cls, value: object) -> State:
        """Read a State from its API name (any case) or its number.

        Anything else (an unknown name or number, ``None``, a wrong type) is
        :attr:`UNRECOGNISED`, never an exception.
        """
        if isinstance(value, bool):
            return cls.UNRECOGNISED
        if isinstance(value, int):
            try:
                state = cls(value)
            except ValueError:
                return cls.UNRECOGNISED
            return state
        if isinstance(value, str):
            text = value.strip()
            if text.lstrip("-").isdigit():
                return cls.parse(int(text))
            return _BY_NAME.get(text.casefold(), cls.UNRECOGNISED)
        return cls.UNRECOGNISED


_API_NAMES = {
    State.UNRECOGNISED: "Unrecognised",
    State.UNKNOWN: "Unknown",
    State.PROVISIONING: "Provisioning",
    State.RUNNING: "Running",
    State.DELETED: "Deleted",
    State.SUSPENDED: "Suspended",
    State.ONLINE_MAINTENANCE: "OnlineMaintenance",
    State.OFFLINE_MAINTENANCE: "OfflineMaintenance",
    State.PROVISIONING_FAILED: "ProvisioningFailed",
    State.DELETING: "Deleting",
    State.DELETE_FAILED: "DeleteFailed",
    State.MIGRATION_PENDING: "MigrationPending",
}
_BY_NAME = {
    **{name.casefold(): state for state, name in _API_NAMES.items() if state >= 0},
    **{state.name.casefold(): state for state in State if state >= 0},
}


@dataclass(frozen=True)
class TenantState:
    """One answer about a tenant: what the State API (or a notification) said."""

    context_id: str
    state: State
    #: The State value as received, kept for logs when it was not recognised.
    raw_state: str = ""
    #: ``IsRunning`` as received; when absent, derived from :attr:`state`.
    is_running: bool = False
    #: Until when the answer holds (UTC), when the source said.
    valid_until: datetime | None = None
    #: The tenant's current server, e.g. ``https://online3.superoffice.com/Cust12345``.
    endpoint: str = ""
    #: The tenant's API base URL, e.g. ``https://online3.superoffice.com/Cust12345/api``.
    api: str = ""

    @property
    def running(self) -> bool:
        """True only when both the state and ``IsRunning`` say the tenant runs."""
        return self.state.is_running and self.is_running


_TIMESTAMP_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?"
    r"\s*(Z|[+-]\d{2}(?::?\d{2})?)?",
    re.IGNORECASE,
)


def parse_timestamp(text: str) -> datetime:
    """Parse an ISO 8601 timestamp as .NET writes it, on every supported Python.

    Accepts any number of fraction digits (.NET writes 7; they are truncated to
    microseconds) and ``Z`` or an offset. A timestamp without an offset is UTC.
    Raises :class:`ValueError` naming the text when it is not a timestamp.

    >>> parse_timestamp("2020-10-05T09:52:01.9342965Z").isoformat()
    '2020-10-05T09:52:01.934296+00:00'
    """
    match = _TIMESTAMP_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not an ISO 8601 timestamp: {text!r}")
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    tz = timezone.utc
    if offset and offset.upper() != "Z":
        sign = -1 if offset[0] == "-" else 1
        digits = offset[1:].replace(":", "")
        delta = timedelta(hours=int(digits[:2]), minutes=int(digits[2:] or "0"))
        tz = timezone(sign * delta)
    try:
        return datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second or "0"),
            micro,
            tzinfo=tz,
        ).astimezone(timezone.utc)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"not a valid timestamp: {text!r} ({exc})") from None


class StateDocumentError(ValueError):
    """A State API document has the wrong shape; the message names the field."""


def parse_state_document(data: Any, *, context_id: str | None = None) -> TenantState:
    """Build a :class:`TenantState` from a State API JSON document.

    Raises :class:`StateDocumentError` naming the field when the document has the
    wrong shape (not an object, a field of the wrong type, no ``ContextIdentifier``).
    A missing or unknown ``State`` is not an error: it reads as
    :attr:`State.UNRECOGNISED`, i.e. not running. A malformed ``ValidUntil`` reads
    as absent: the answer is then re-checked after the minimum cache time.
    When *context_id* is given, it is only used as a fallback for documents
    that omit ``ContextIdentifier``; checking that they match is the caller's job.
    """
    if not isinstance(data, dict):
        raise StateDocumentError(f"expected a JSON object, got {type(data).__name__}")
    ctx = data.get("ContextIdentifier", context_id)
    if not isinstance(ctx, str) or not ctx:
        raise StateDocumentError("field 'ContextIdentifier' must be a non-empty string")
    raw = data.get("State")
    if raw is not None and not isinstance(raw, (str, int)):
        raise StateDocumentError(
            f"field 'State' must be a string or a number, got {type(raw).__name__}"
        )
    state = State.parse(raw)
    is_running = data.get("IsRunning")
    if is_running is None:
        is_running = state.is_running
    elif not isinstance(is_running, bool):
        raise StateDocumentError(
            f"field 'IsRunning' must be true or false, got {type(is_running).__name__}"
        )
    strings = {}
    for field in ("Endpoint", "Api", "ValidUntil"):
        value = data.get(field)
        if value is not None and not isinstance(value, str):
            raise StateDocumentError(
                f"field {field!r} must be a string, got {type(value).__name__}"
            )
        strings[field] = value or ""
    valid_until: datetime | None
    try:
        valid_until = parse_timestamp(strings["ValidUntil"]) if strings["ValidUntil"] else None
    except ValueError:
        valid_until = None
    return TenantState(
        context_id=ctx,
        state=state,
        raw_state="" if raw is None else str(raw),
        is_running=is_running,
        valid_until=valid_until,
        endpoint=strings["Endpoint"],
        api=strings["Api"],
    )
