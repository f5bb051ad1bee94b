"""Tenant ids (SuperOffice "context identifiers", such as ``Cust12345``)."""

from __future__ import annotations

import re

from .errors import InvalidTenantId

#: SuperOffice CRM Online names every tenant ``Cust`` followed by digits.
#: Override with the ``tenant_gate_tenant_id_pattern`` setting if yours differ.
DEFAULT_TENANT_ID_PATTERN = r"Cust[0-9]{1,12}"

_DEFAULT_RE = re.compile(DEFAULT_TENANT_ID_PATTERN)
#: Whatever the configured pattern says, a tenant id goes into URLs, queue names
#: and Redis keys: it never contains more than these characters.
_SAFE_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a tenant id pattern (matched against the whole id)."""
    return re.compile(pattern)


def validate_tenant_id(value: object, pattern: re.Pattern[str] | None = None) -> str:
    """Return *value* if it is a well-formed tenant id, else raise :class:`InvalidTenantId`.

    >>> validate_tenant_id("Cust12345")
    'Cust12345'
    """
    if not isinstance(value, str):
        raise InvalidTenantId(
            f"tenant id must be a string such as 'Cust12345', got {type(value).__name__}"
        )
    regex = _DEFAULT_RE if pattern is None else pattern
    if not (regex.fullmatch(value) and _SAFE_RE.fullmatch(value)):
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise InvalidTenantId(
            f"malformed tenant id {shown!r}: expected a SuperOffice context identifier "
            f"matching {regex.pattern!r} (letters, digits, '_' and '-', at most 64)"
        )
    return value
