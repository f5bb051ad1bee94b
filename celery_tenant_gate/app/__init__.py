"""Wiring into a Celery app: the per-app singletons and the tenant-scoped task base."""
