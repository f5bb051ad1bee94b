"""Settings: the ``tenant_gate_*`` keys of ``app.conf``, their defaults, docs and checks.
No I/O.

- :mod:`.settings`: :class:`GateConfig`, every setting with its default, meaning and parser.
- :mod:`.checks`: the parsers of setting values.
- :mod:`.reading`: from ``app.conf`` to the app's cached config (:func:`gate_config`),
  typo warnings (:class:`UnknownSettingWarning`), settings changed after they were read.
"""

from .reading import UnknownSettingWarning, built_from_settings, gate_config
from .settings import GateConfig

__all__ = ["GateConfig", "UnknownSettingWarning", "built_from_settings", "gate_config"]
