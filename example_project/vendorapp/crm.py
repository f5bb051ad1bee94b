"""Calls to a tenant's SuperOffice API, always at its *current* address.

The address comes from the gate (``self.tenant.api`` in a task): tenants move between
servers, and a call to the old one answers 421 Misdirected Request. Never store it.

Authentication is left out of this example: a real app sends the tenant's OAuth access
token and its application token (``Authorization``, ``SO-AppToken`` headers).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import requests

TIMEOUT = (3.05, 10.0)  # connect, read


class Misdirected(Exception):
    """The server says the tenant is not (or no longer) there: HTTP 421."""


def tenant_url(api: str, path: str, via: str | None = None) -> str:
    """The URL of *path* under the tenant's API base *api*.

    With *via* (``VENDORAPP_TENANT_API_VIA``) the call goes to ``{via}/{host}/{path}``
    instead: a local stand-in for SuperOffice's servers, for tests and the demo.
    """
    if not api:
        raise ValueError("the tenant's API address is not known yet")
    url = f"{api.rstrip('/')}/{path.lstrip('/')}"
    if via:
        parts = urlsplit(url)
        url = f"{via.rstrip('/')}/{parts.netloc}{parts.path}"
    return url


def get(api: str, path: str, *, via: str | None = None, session: Any = requests) -> Any:
    """GET *path* of the tenant's API and return the JSON answer."""
    response = session.get(
        tenant_url(api, path, via), headers={"Accept": "application/json"}, timeout=TIMEOUT
    )
    if response.status_code == 421:
        raise Misdirected(f"{api}: 421 Misdirected Request")
    response.raise_for_status()
    return response.json()
