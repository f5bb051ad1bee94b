"""Benchmarks. Run them all with ``python -m bench`` (``--json FILE`` to keep results)."""
