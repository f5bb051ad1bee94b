"""Settings: the ``tenant_gate_*`` keys of ``app.conf``, their defaults, docs and checks.
No I/O."""
