"""The Redis Lua scripts, shipped as ``.lua`` files beside the modules that run them.

A module of package ``P`` keeps its scripts in ``P/lua/{name}.lua`` and reads each once,
at import, with :func:`lua_script`; it registers the text with redis-py's
``register_script``, which runs it by its SHA1 (``EVALSHA``) and loads it when Redis
does not know it. The files are read through :mod:`importlib.resources`, so they are
found in a wheel, a zip or a source tree alike.
"""

from __future__ import annotations

import threading
from importlib.resources import files

__all__ = ["lua_script", "lua_scripts_read"]

_read: dict[tuple[str, str], str] = {}
_lock = threading.Lock()


def lua_script(package: str, name: str) -> str:
    """The text of the script ``lua/{name}.lua`` of *package* (a package's dotted name:
    pass ``__package__``), read once per process."""
    key = (package, name)
    with _lock:
        if key not in _read:
            path = files(package) / "lua" / f"{name}.lua"
            _read[key] = path.read_text(encoding="utf-8")
        return _read[key]


def lua_scripts_read() -> frozenset[tuple[str, str]]:
    """Every script read so far in this process, as ``(package, name)``."""
    with _lock:
        return frozenset(_read)
