"""Where a tenant session's request goes: a path relative to the tenant's ``Api``
(``"v1/Contact/5"``) is joined under it; an absolute URL on the ``Api`` can be moved
to a new one when the tenant moves. No I/O."""

from __future__ import annotations

from urllib.parse import urlsplit

_SCHEMES = ("http://", "https://")


def is_absolute(url: str) -> bool:
    """True for an ``http(s)://`` URL (any case), False for a path."""
    return url[:8].lower().startswith(_SCHEMES)


def api_url(api: str, url: str) -> str:
    """*url* as sent for a tenant whose ``Api`` is *api*.

    >>> api_url("https://online3.superoffice.com/Cust1/api", "v1/Contact/5")
    'https://online3.superoffice.com/Cust1/api/v1/Contact/5'
    >>> api_url("https://online3.superoffice.com/Cust1/api/", "/v1/Contact")
    'https://online3.superoffice.com/Cust1/api/v1/Contact'

    A path, with or without a leading ``/``, goes under *api*; an absolute URL (a
    ``next`` link of a page) is sent as it is.
    """
    if not isinstance(url, str):
        raise TypeError(f"a tenant session's URL is a str, not {type(url).__name__}")
    if is_absolute(url):
        return url
    if not is_absolute(api):
        raise ValueError(f"the tenant's Api is not an http(s) URL: {api!r}")
    return api.rstrip("/") + "/" + url.lstrip("/")


def rebase(url: str, old_api: str, new_api: str) -> str | None:
    """*url* (absolute) moved from *old_api* to *new_api*, or None when it is not
    under *old_api* (then it is not the tenant's API, and cannot be moved).

    >>> rebase("https://online3.superoffice.com/Cust1/api/v1/Contact?$top=5",
    ...        "https://online3.superoffice.com/Cust1/api", "https://online7.superoffice.com/Cust1/api")
    'https://online7.superoffice.com/Cust1/api/v1/Contact?$top=5'
    """
    old, split = urlsplit(old_api.rstrip("/")), urlsplit(url)
    if (old.scheme.lower(), old.netloc.lower()) != (split.scheme.lower(), split.netloc.lower()):
        return None
    if not (split.path == old.path or split.path.startswith(old.path + "/")):
        return None  # ".../Cust1/apix" is not under ".../Cust1/api"
    rest = split.path[len(old.path) :]
    if split.query:
        rest += "?" + split.query
    if split.fragment:
        rest += "#" + split.fragment
    return new_api.rstrip("/") + rest


def host_of(url: str) -> str:
    """The host (and port) of *url*, without any user or password in it."""
    split = urlsplit(url)
    host = split.hostname or ""
    return f"{host}:{split.port}" if split.port else host
