"""Calls to a tenant's SuperOffice API, always at its *current* address.

The tasks call through the tenant session (``self.tenant.session``): paths go to the
tenant's current ``Api``, each call is preceded by the gate's state check, and a 421
Misdirected Request (the tenant moved) is retried once on its new server. Never store
the address.

Authentication is left out of this example: a real app sends the tenant's OAuth access
token and its application token (``Authorization``, ``SO-AppToken`` headers).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from requests.adapters import HTTPAdapter

TIMEOUT = (3.05, 10.0)  # connect, read


class Via(HTTPAdapter):
    """Sends ``https://{host}/{path}`` to ``{via}/{host}/{path}``: the local stand-in
    for SuperOffice's servers (``VENDORAPP_TENANT_API_VIA``), for tests and the demo."""

    def __init__(self, via: str) -> None:
        super().__init__()
        self.via = via.rstrip("/")

    def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        parts = urlsplit(request.url)
        request.url = f"{self.via}/{parts.netloc}{parts.path}" + (
            f"?{parts.query}" if parts.query else ""
        )
        return super().send(request, *args, **kwargs)


def prepare(session: Any, via: str | None = None) -> Any:
    """The tenant *session*, ready for the app's calls."""
    session.headers["Accept"] = "application/json"
    # A real app authenticates here: session.headers["Authorization"] = f"Bearer {token}"
    # and session.headers["SO-AppToken"] = app_token (or session.auth = a refreshing auth).
    session.timeout = TIMEOUT
    if via:
        session.mount("https://", Via(via))
    return session


def all_pages(session: Any, path: str) -> list[Any]:
    """Every item of a listing, page by page (``odata.nextLink`` is absolute, on the
    tenant's ``Api``: the session sends it as it is)."""
    items: list[Any] = []
    url: str | None = path
    while url:
        response = session.get(url)
        response.raise_for_status()
        page = response.json()
        items += page.get("value", [])
        url = page.get("odata.nextLink")
    return items
