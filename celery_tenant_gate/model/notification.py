"""SuperOffice's state-change notification: the model and its strict parser. No I/O.

SuperOffice POSTs a JSON object to the app's "State Change URL"::

    {"ChangeType": 0, "ContextIdentifier": "Cust12345", "VersionName": "Release 10.3.8",
     "FileVersion": "10.3.8.2024", "Token": "eyJ...", "PublicEndpoint": "online3.superoffice.com"}

:func:`parse_notification` turns such a body into a :class:`Notification`, or raises
:class:`BadNotification` naming the field at fault. It does not check the token's
signature: that is :mod:`celery_tenant_gate.tokens`.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from typing import Any

from .errors import InvalidTenantId, TenantGateError
from .ids import validate_tenant_id

#: Deepest nesting of objects and arrays accepted in a body (the real one has depth 1).
MAX_DEPTH = 8

#: A bare SuperOffice host name: labels of letters, digits and hyphens, ending in
#: ``.superoffice.com``; no scheme, port, path or user.
_SUPEROFFICE_HOST = re.compile(
    r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+superoffice\.com", re.IGNORECASE
)


class ChangeType(enum.IntEnum):
    """What happened to the tenant (the ``ChangeType`` number SuperOffice sends)."""

    Upgrade = 0
    BackupRestored = 1
    Suspend = 2
    Resume = 3
    Delete = 4
    Move = 5


@dataclass(frozen=True)
class Notification:
    """One parsed notification. Optional fields SuperOffice left out are ``""``."""

    change_type: ChangeType
    context_id: str
    version_name: str
    file_version: str
    token: str
    public_endpoint: str


class BadNotification(TenantGateError, ValueError):
    """The body is not a well-formed notification; ``field`` names the culprit, if one."""

    def __init__(self, status: int, field: str | None, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.status = status
        self.field = field
        self.message = message


def parse_notification(body: bytes, *, pattern: re.Pattern[str] | None = None) -> Notification:
    """Parse and check a notification body; tenant ids must match *pattern* (default ``Cust…``).

    >>> body = b'{"ChangeType": 2, "ContextIdentifier": "Cust1", "Token": "eyJ..."}'
    >>> parse_notification(body).change_type
    <ChangeType.Suspend: 2>
    """
    document = _load(body)
    return Notification(
        change_type=_change_type(document),
        context_id=_context_id(document, pattern),
        version_name=_optional_text(document, "VersionName"),
        file_version=_optional_text(document, "FileVersion"),
        token=_token(document),
        public_endpoint=_public_endpoint(document),
    )


def _bad(field: str | None, message: str) -> BadNotification:
    return BadNotification(400, field, message)


def _load(body: bytes) -> dict[str, Any]:
    if not body:
        raise _bad(None, "the body is empty: expected a JSON object")
    try:
        text = body.decode("utf-8")
        document = json.loads(
            text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant
        )
    except UnicodeDecodeError:
        raise _bad(None, "the body is not UTF-8") from None
    except RecursionError:
        raise _bad(None, f"the body nests deeper than {MAX_DEPTH} levels") from None
    except BadNotification:
        raise
    except ValueError as exc:
        raise _bad(None, f"the body is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise _bad(None, f"the body must be a JSON object, got {_json_type(document)}")
    if _depth(document, 1) > MAX_DEPTH:
        raise _bad(None, f"the body nests deeper than {MAX_DEPTH} levels")
    return document


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two parsers may pick different copies of a repeated key: refuse the ambiguity.
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise _bad(key, "appears more than once")
        document[key] = value
    return document


def _no_constant(name: str) -> Any:
    raise _bad(None, f"the body is not JSON: {name} is not a JSON number")


def _depth(value: Any, level: int) -> int:
    if not isinstance(value, (dict, list)):
        return level - 1
    if level > MAX_DEPTH:
        return level
    children = value.values() if isinstance(value, dict) else value
    return max((_depth(child, level + 1) for child in children), default=level)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _change_type(document: dict[str, Any]) -> ChangeType:
    value = document.get("ChangeType")
    if value is None:
        raise _bad("ChangeType", "is missing")
    # bool is an int in Python, and 2.0 == 2: neither is what SuperOffice sends.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad("ChangeType", f"must be an integer 0-5, got {_json_type(value)}")
    try:
        return ChangeType(value)
    except ValueError:
        raise _bad("ChangeType", f"unknown change type {value} (known: 0-5)") from None


def _context_id(document: dict[str, Any], pattern: re.Pattern[str] | None) -> str:
    value = document.get("ContextIdentifier")
    if value is None or value == "":
        raise _bad("ContextIdentifier", "is missing")
    if not isinstance(value, str):
        raise _bad("ContextIdentifier", f"must be a string, got {_json_type(value)}")
    try:
        return validate_tenant_id(value, pattern)
    except InvalidTenantId as exc:
        raise _bad("ContextIdentifier", str(exc)) from None


def _optional_text(document: dict[str, Any], field: str) -> str:
    value = document.get(field)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _bad(field, f"must be a string, got {_json_type(value)}")
    return value


def _token(document: dict[str, Any]) -> str:
    # A missing token is not a malformed body but an unproven sender: the receiver
    # answers 401, as for any other token it cannot verify.
    value = document.get("Token")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _bad("Token", f"must be a string, got {_json_type(value)}")
    return value


def _public_endpoint(document: dict[str, Any]) -> str:
    value = _optional_text(document, "PublicEndpoint")
    if value and not (len(value) <= 253 and _SUPEROFFICE_HOST.fullmatch(value)):
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise _bad(
            "PublicEndpoint",
            f"must be a SuperOffice host name such as 'online3.superoffice.com' "
            f"(no scheme, port or path), got {shown!r}",
        )
    return value.lower()
