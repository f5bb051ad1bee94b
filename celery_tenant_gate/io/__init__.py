"""Talking to the outside: SuperOffice (State API, token keys), the shared Redis store,
the brokers' tenant queues, Prometheus. No policy: what to do is decided in
:mod:`celery_tenant_gate.gate`."""
